"""`svd-atlas compare`: two models of one atlas, matrix by matrix and in aggregate."""

from __future__ import annotations

from typing import Any

import click

from atlas.cli.output import emit, format_option


@click.command()
@click.argument("model_a")
@click.argument("model_b")
@click.option("--aggregate", is_flag=True, help="Only the per-kind and overall rows.")
@format_option
@click.pass_obj
def compare(obj: dict[str, Any], model_a: str, model_b: str, aggregate: bool, fmt: str) -> None:
    """Compare MODEL_A and MODEL_B (e.g. one model ingested raw and tl) head by head.

    Per matrix: relative change of the singular values, spectrum correlation, top-token overlap
    of directions matched by sv_index and by best cosine, and the coherence difference (B - A);
    then means per kind and overall.
    """
    import atlas
    from atlas.interface import COMPARE_COLUMNS as COLUMNS

    with atlas.open(obj["atlas"]) as a:
        rows = a.compare(model_a, model_b)
    if aggregate:
        rows = [r for r in rows if r["scope"] == "aggregate"]
    emit(rows, COLUMNS, fmt)


COMMANDS = [compare]
