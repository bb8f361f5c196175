"""`svd-atlas circuits`: head composition, a model's strongest edges or one head's."""

from __future__ import annotations

from typing import Any

import click

from atlas.cli.output import dumps, emit, format_option
from atlas.cli.params import options
from atlas.errors import BadParameter
from atlas.params import CompositionParams

EDGE_COLUMNS = ["mode", "src_layer", "src_head", "dst_layer", "dst_head", "score", "relative",
                "top_pairs_share"]  # fmt: skip
PAIR_COLUMNS = ["rank", "src_direction_id", "dst_direction_id", "src_sv", "dst_sv", "share"]


@click.command()
@click.argument("model")
@click.argument("where", nargs=-1, metavar="[LAYER HEAD]")
@options(CompositionParams, exclude=("model", "layer", "head"))
@click.option("--pairs", is_flag=True, help="With LAYER HEAD: each edge's direction pairs.")
@format_option
@click.pass_obj
def circuits(
    obj: dict[str, Any], model: str, where: tuple[str, ...], pairs: bool, fmt: str, **params: Any
) -> None:
    """Head composition (Q, K, V): MODEL's strongest edges per mode, or with LAYER HEAD that
    head's in-edges (who feeds its query, key and value inputs) and out-edges (whom its output
    feeds). score is TransformerLens's composition score; relative is score over the baseline
    of randomly oriented matrices (1/sqrt(d_model))."""
    import atlas

    if len(where) not in (0, 2):
        raise BadParameter("give LAYER and HEAD, or neither")
    place = dict(zip(("layer", "head"), where, strict=True)) if where else {}
    with atlas.open(obj["atlas"]) as a:
        result = a.composition(model, **place, **params)
    if fmt == "json":
        click.echo(dumps(result))
        return
    if not where:
        emit(result["edges"], EDGE_COLUMNS, fmt)
        return
    for end, title in (("in", "fed by"), ("out", "feeds")):
        edges = result[end]
        if fmt == "table":
            click.echo(f"\n{model} layer {result['layer']} head {result['head']}: {title}")
        emit(edges, EDGE_COLUMNS, fmt)
        if pairs and fmt == "table":
            for e in edges:
                click.echo(
                    f"  {e['mode']} L{e['src_layer']}H{e['src_head']} -> "
                    f"L{e['dst_layer']}H{e['dst_head']}:"
                )
                rows = [{**p, "share": p["contribution"] / e["score"] ** 2} for p in e["pairs"]]
                emit(rows, PAIR_COLUMNS, fmt)


COMMANDS = [circuits]
