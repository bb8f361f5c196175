"""`svd-atlas edit`: a rank-1 concept edit on the live model, measured on prompts."""

from __future__ import annotations

from typing import Any

import click

from atlas.cli.output import dumps, emit, format_option
from atlas.errors import AtlasError, BadParameter
from atlas.writing import DEFAULT_DEVICE, DEVICES

EDIT_COLUMNS = [
    "direction_id",
    "kind",
    "layer",
    "head",
    "sv_index",
    "side",
    "sigma",
    "eps",
    "route",
    "tokens",
]
RESULT_COLUMNS = [
    "prompt",
    "target",
    "token",
    "p_before",
    "p_after",
    "p_ratio",
    "rank_before",
    "rank_after",
]


@click.command()
@click.argument("model")
@click.option(
    "--direction",
    "direction_ids",
    type=int,
    multiple=True,
    required=True,
    help="direction_id to edit (repeatable; either side of an OV triple names the triple).",
)
@click.option(
    "--eps",
    "eps",
    type=float,
    multiple=True,
    required=True,
    help="Factor per --direction, in order (one value applies to all): -1 removes, "
    "between -1 and 0 dampens, above 0 amplifies.",
)
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (repeatable).")
@click.option("--target", "targets", multiple=True, help="Target token, one per --prompt.")
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(exists=True, dir_okay=False),
    help="File of prompt<TAB>target lines.",
)
@click.option("--device", type=click.Choice(DEVICES), default=DEFAULT_DEVICE, show_default=True)
@format_option
@click.pass_obj
def edit(
    obj: dict[str, Any],
    model: str,
    direction_ids: tuple[int, ...],
    eps: tuple[float, ...],
    prompts: tuple[str, ...],
    targets: tuple[str, ...],
    prompts_file: str | None,
    device: str,
    fmt: str,
) -> None:
    """Apply W' = W + sum_i eps_i sigma_i u_i v_i^T to MODEL's live weights and print each
    target token's next-token probability and rank (0 = most likely) before and after.

    MODEL is a model_id in the atlas; the model is booted again from the spec it was ingested
    from, with the same weight processing, and checked against the atlas.
    """
    import atlas

    pairs = _pairs(prompts, targets, prompts_file)
    if len(eps) not in (1, len(direction_ids)):
        raise BadParameter(
            f"give one for all directions or one per `direction` "
            f"({len(direction_ids)} directions, {len(eps)} eps values)",
            param="eps",
        )
    factors = list(eps) * len(direction_ids) if len(eps) == 1 else list(eps)
    with atlas.open(obj["atlas"]) as a:
        report = a.edit(model, list(zip(direction_ids, factors, strict=True)), pairs, device)
    edit_rows = [
        {
            **{k: getattr(e.direction, k) for k in EDIT_COLUMNS[:6]},
            "sigma": e.sigma,
            "eps": e.eps,
            "route": e.route,
            "tokens": report.tokens.get(e.direction.direction_id, []),
        }
        for e in report.edits
    ]
    results = [
        {
            "prompt": p.prompt,
            "target": p.target,
            "token": p.target_token,
            "p_before": b.probability,
            "p_after": f.probability,
            "p_ratio": f.probability / b.probability if b.probability > 0 else None,
            "rank_before": b.rank,
            "rank_after": f.rank,
        }
        for p, b, f in zip(report.probes, report.before, report.after, strict=True)
    ]
    if fmt == "json":
        click.echo(dumps({"model_id": model, "edits": edit_rows, "results": results}))
    elif fmt == "csv":  # one table: each probe's row says which edits it was measured under
        applied = ";".join(f"{e['direction_id']}:{e['eps']!r}" for e in edit_rows)  # exactly
        emit([{**r, "edits": applied} for r in results], [*RESULT_COLUMNS, "edits"], fmt)
    else:
        emit(edit_rows, EDIT_COLUMNS, fmt)
        click.echo("")
        emit(results, RESULT_COLUMNS, fmt)
        click.echo("\nthe weights were restored bit for bit after measuring")


def _pairs(
    prompts: tuple[str, ...], targets: tuple[str, ...], prompts_file: str | None
) -> list[tuple[str, str]]:
    if len(prompts) != len(targets):
        raise AtlasError(
            f"give one --target per --prompt ({len(prompts)} prompts, {len(targets)} targets)"
        )
    pairs = list(zip(prompts, targets, strict=True))
    if prompts_file:
        from atlas.interface import read_pairs  # imports torch: only when there is a file

        pairs += read_pairs(prompts_file)
    if not pairs:
        raise AtlasError("nothing to measure: give --prompt TEXT --target TOKEN or --prompts FILE")
    return pairs


COMMANDS = [edit]
