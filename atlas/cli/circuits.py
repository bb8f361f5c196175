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
# named as the parameters, so that an error about one names the argument (HEAD), not a flag
@click.argument("layer", required=False)
@click.argument("head", required=False)
@options(CompositionParams, exclude=("model", "layer", "head"))
@click.option("--pairs", is_flag=True, help="With LAYER HEAD: each edge's direction pairs.")
@format_option
@click.pass_obj
def circuits(
    obj: dict[str, Any],
    model: str,
    layer: str | None,
    head: str | None,
    pairs: bool,
    fmt: str,
    **params: Any,
) -> None:
    """Head composition (Q, K, V): MODEL's strongest edges per mode, or with LAYER HEAD that
    head's in-edges (who feeds its query, key and value inputs) and out-edges (whom its output
    feeds). score is TransformerLens's composition score; relative is score over the baseline
    of randomly oriented matrices (1/sqrt(d_model))."""
    import atlas

    if head is None and layer is not None:
        raise BadParameter("give LAYER and HEAD, or neither")
    if pairs and head is None:  # a model's strongest edges come without their pairs
        raise BadParameter("--pairs lists one head's edges' direction pairs: give LAYER and HEAD")
    place = {"layer": layer, "head": head} if head is not None else {}
    with atlas.open(obj["atlas"]) as a:
        result = a.composition(model, **place, **params)
    if fmt == "json":
        click.echo(dumps(result))
        return
    if not place:
        emit(result["edges"], EDGE_COLUMNS, fmt)
        return
    if fmt == "csv":  # one table: each edge (or with --pairs each of its pairs) a row
        rows = [
            {"end": end, **e, **p}
            for end in ("in", "out")
            for e in result[end]
            for p in ((e["pairs"] or [{}]) if pairs else [{}])  # an edge without pairs: a row
        ]
        emit(rows, ["end", *EDGE_COLUMNS, *(PAIR_COLUMNS if pairs else [])], fmt)
        return
    for end, title in (("in", "fed by"), ("out", "feeds")):
        edges = result[end]
        click.echo(f"\n{model} layer {result['layer']} head {result['head']}: {title}")
        emit(edges, EDGE_COLUMNS, fmt)
        if pairs:
            for e in edges:
                click.echo(
                    f"  {e['mode']} L{e['src_layer']}H{e['src_head']} -> "
                    f"L{e['dst_layer']}H{e['dst_head']}:"
                )
                emit([_marked(p) for p in e["pairs"]], PAIR_COLUMNS, fmt)


def _marked(pair: dict[str, Any]) -> dict[str, Any]:
    """A pair as the table shows it: ``~`` after the sv index of a degenerate direction, as a
    card marks it (its share is one basis choice's)."""
    marked = dict(pair)
    for end in ("src", "dst"):
        if pair.get(f"{end}_degenerate"):
            marked[f"{end}_sv"] = f"{pair[f'{end}_sv']}~"
    return marked


COMMANDS = [circuits]
