"""`svd-atlas coherence`: the coherence of bare token lists, led by a percentile against a null."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

import atlas
from atlas.cli.output import emit, format_option, print_table
from atlas.errors import BadParameter, one_line

RECORD = ["coherence_pct", "coherence", "tokens"]


@click.command()
@click.argument("tokens", required=False)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Score each line: one comma-separated token list per line.",
)
@format_option
@click.pass_obj
def coherence(_obj: dict[str, Any], tokens: str | None, path: Path | None, fmt: str) -> None:
    """Score how coherent a list of tokens is ("fire, flame, smoke, ...").

    First the percentile: the percent of 10,000 random lists of as many tokens from the bundled
    MiniLM's vocabulary that score at or below the list (random lists land anywhere from 0 to
    100, 50 on average). Then the raw score: P(a lenient judge names a theme), which almost
    every list of real words puts above 0.9. See docs/coherence.md.
    """
    if (tokens is None) == (path is None):
        raise click.UsageError("give either a token list or --file FILE")
    lines = [tokens] if tokens is not None else _lines(path)
    try:
        results = atlas.coherence(*lines)
    except BadParameter as exc:
        if path is None:
            raise
        raise BadParameter(f"{path}: {exc.message}") from None
    if fmt != "table":  # one record per list: percentile, raw score, tokens (json: and the null)
        records = [{**r.to_dict(), "coherence": round(r.coherence, 6)} for r in results]
        emit(records, [*RECORD, "null"] if fmt == "json" else RECORD, fmt)
        return
    rows = [
        {
            "percentile": f"{r.coherence_pct:.1f}",
            "P(theme)": f"{r.coherence:.4f}",
            "tokens": ", ".join(r.tokens),
        }
        for r in results
    ]
    print_table(rows, ["percentile", "P(theme)", "tokens"])
    null = results[0].null
    click.echo(
        f"\npercentile: percent of {null['lists']:,} random lists of as many tokens from the "
        f"{null['vocabulary']} vocabulary ({null['vocabulary_size']:,} tokens, seed "
        f"{null['seed']}) scoring at or below the list\nP(theme): the raw score, P(a lenient "
        "judge names a theme); most lists of real words score above 0.9"
    )


def _lines(path: Path | None) -> list[str]:
    assert path is not None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise atlas.AtlasError(f"{path} is not UTF-8 text ({one_line(exc, 120)})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise atlas.AtlasError(f"{path} holds no token lists")
    return lines


COMMANDS = [coherence]
