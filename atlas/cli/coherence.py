"""`svd-atlas coherence`: the coherence score of bare token lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from atlas.cli.output import text_or_json_option
from atlas.core.errors import AtlasError


@click.command()
@click.argument("tokens", required=False)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Score each line: one comma-separated token list per line.",
)
@text_or_json_option("text: one score per line; json: one object per list with its score.")
@click.pass_obj
def coherence(_obj: dict[str, Any], tokens: str | None, path: Path | None, fmt: str) -> None:
    """Score how coherent a list of tokens is ("fire, flame, smoke, ...").

    The score (0 to 1) estimates the probability that a judge names a shared meaning; it is the
    same score the atlas stores for each direction's top tokens. See the README for its
    definition and calibration.
    """
    from ingest.coherence import Scorer, parse_list

    if (tokens is None) == (path is None):
        raise AtlasError("give either a token list or --file FILE")
    lines = [tokens] if tokens is not None else _lines(path)
    lists = [parse_list(line) for line in lines]
    for n, tokens_ in enumerate(lists, 1):
        if len(tokens_) < 2:
            where = f"line {n} of {path}" if path else "the token list"
            raise AtlasError(f"{where} needs at least two comma-separated tokens")
    scores = Scorer().score_lists(lists)
    for tokens_, score in zip(lists, scores, strict=True):
        if fmt == "json":
            click.echo(json.dumps({"score": round(float(score), 6), "tokens": tokens_}))
        else:
            click.echo(f"{score:.4f}")


def _lines(path: Path | None) -> list[str]:
    assert path is not None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise AtlasError(f"{path} holds no token lists")
    return lines


COMMANDS = [coherence]
