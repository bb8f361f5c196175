"""`svd-atlas sql`, `search`, `trace` and `show`: reading an atlas (no torch imported)."""

from __future__ import annotations

from typing import Any

import click

from atlas.output import emit, format_option


@click.command()
@click.argument("query")
@click.option("--write", is_flag=True, help="Allow writes to your own tables (user.duckdb).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the result to a .parquet file.")
@format_option
@click.pass_obj
def sql(obj: dict[str, Any], query: str, write: bool, out: str | None, fmt: str) -> None:
    """Run one SQL statement against the atlas (read-only unless --write).

    Tables: models, matrices, directions, top_tokens, top_neurons, vocab. Views:
    direction_tokens, head_summary, layer_norms.
    """
    import atlas
    from query.sql import run_sql

    with atlas.open(obj["atlas"]) as a:
        result = run_sql(a, query, write)
    if out:
        import pyarrow.parquet as pq

        pq.write_table(result, out)
        click.echo(f"wrote {result.num_rows} rows to {out}", err=True)
        return
    emit(result.to_pylist(), result.column_names, fmt)


def _filter_options(fn: Any) -> Any:
    for decorator in reversed(
        [
            click.option("--model", "models", help="Model id(s), comma-separated."),
            click.option(
                "--kind", "kinds", help="ov, mlp_in, mlp_gate, mlp_out (comma-separated)."
            ),
            click.option(
                "--layer", "layers", help="N, START:STOP (stop excluded), START: or :STOP."
            ),
            click.option("--head", "heads", help="Head number(s), comma-separated."),
            click.option("--side", type=click.Choice(["read", "write"])),
            click.option("--max-sv-index", type=click.IntRange(0), help="Keep sv_index <= N."),
            click.option("--min-sigma", type=float, help="Keep sigma >= X."),
        ]
    ):
        fn = decorator(fn)
    return fn


def _filters(
    kinds: str | None,
    layers: str | None,
    heads: str | None,
    side: str | None,
    max_sv_index: int | None,
    min_sigma: float | None,
) -> Any:
    from query.filters import Filters, parse_ints, parse_layers, parse_names

    return Filters(
        kinds=parse_names(kinds),
        layers=parse_layers(layers),
        heads=parse_ints(heads, "head"),
        side=side,
        max_sv_index=max_sv_index,
        min_sigma=min_sigma,
    )


HIT_COLUMNS = [
    "direction_id",
    "model_id",
    "layer",
    "head",
    "kind",
    "side",
    "sv_index",
    "sigma",
    "sign",
    "score",
    "tokens",
]


def _hit_row(hit: Any, n_tokens: int) -> dict[str, Any]:
    row = hit.to_dict()
    row["tokens"] = row["tokens"][:n_tokens]
    if hit.degenerate:
        row["sv_index"] = f"{hit.sv_index}~"
    return row


@click.command()
@click.argument("words", nargs=-1)
@click.option("--direction", type=int, help="More like this direction id.")
@click.option("--vector", type=click.Path(dir_okay=False), help="A residual-space vector (.npy).")
@click.option(
    "--space",
    type=click.Choice(["auto", "residual", "token"]),
    default="auto",
    show_default=True,
    help="auto: residual within one model, token across models.",
)
@_filter_options
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of hits.")
@click.option("--min-score", type=click.FloatRange(0, 1), default=0.0, help="Keep |cos| >= X.")
@click.option(
    "--tokens",
    "n_tokens",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Tokens shown per hit in the table.",
)
@format_option
@click.pass_obj
def search(
    obj: dict[str, Any],
    words: tuple[str, ...],
    direction: int | None,
    vector: str | None,
    space: str,
    models: str | None,
    kinds: str | None,
    layers: str | None,
    heads: str | None,
    side: str | None,
    max_sv_index: int | None,
    min_sigma: float | None,
    k: int,
    min_score: float,
    n_tokens: int,
    fmt: str,
) -> None:
    """Directions nearest to a concept: WORDS (one concept), --direction ID or --vector FILE.

    Both valences are matched: sign -1 means the concept sits in the direction's negative
    tokens. A ~ after sv_index marks a near-degenerate direction (only its group's span is
    meaningful).
    """
    import atlas
    from query.filters import parse_names
    from query.search import approximate_note, resolve_query
    from query.search import search as run_search

    with atlas.open(obj["atlas"]) as a:
        query = resolve_query(
            a,
            text=list(words) if words else None,
            direction=direction,
            vector=vector,
            models=parse_names(models),
            space=space,
        )
        filters = _filters(kinds, layers, heads, side, max_sv_index, min_sigma)
        for note in [*query.notes, approximate_note(a, query, filters)]:
            if note:
                click.echo(f"note: {note}", err=True)
        hits = run_search(a, query, filters, k=k, min_score=min_score)
    if fmt == "json":
        emit(
            [h.to_dict() for h in hits],
            [*HIT_COLUMNS, "opposite_tokens", "degenerate", "space"],
            fmt,
        )
    else:
        emit([_hit_row(h, n_tokens) for h in hits], HIT_COLUMNS, fmt)


@click.command()
@click.argument("direction_id", type=int)
@click.option(
    "--min-cos", type=click.FloatRange(0, 1, min_open=True), default=0.3, show_default=True
)
@click.option(
    "--hops",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Follow neighbours of neighbours this many times.",
)
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=500,
    show_default=True,
    help="Stop after this many directions.",
)
@click.option("--same-model", is_flag=True, help="Do not cross into other models.")
@_filter_options
@click.option("--tokens", "n_tokens", type=click.IntRange(1), default=8, show_default=True)
@format_option
@click.pass_obj
def trace(
    obj: dict[str, Any],
    direction_id: int,
    min_cos: float,
    hops: int,
    limit: int,
    same_model: bool,
    models: str | None,
    kinds: str | None,
    layers: str | None,
    heads: str | None,
    side: str | None,
    max_sv_index: int | None,
    min_sigma: float | None,
    n_tokens: int,
    fmt: str,
) -> None:
    """Every direction whose |cos| with DIRECTION_ID passes --min-cos, grouped by layer.

    In the direction's own model through residual space, in other models through token
    space. sign is the valence relative to DIRECTION_ID; parent is the direction each was
    reached from (with --hops > 1).
    """
    import atlas
    from query.filters import parse_names
    from query.trace import trace as run_trace

    with atlas.open(obj["atlas"]) as a:
        steps = run_trace(
            a,
            direction_id,
            min_cos,
            hops,
            _filters(kinds, layers, heads, side, max_sv_index, min_sigma),
            limit=limit,
            across_models=not same_model,
        )
    wanted = parse_names(models)
    rows = []
    for s in steps:
        if wanted and s.hit.model_id not in wanted:
            continue
        row = _hit_row(s.hit, n_tokens) if fmt != "json" else s.hit.to_dict()
        row.update(hop=s.hop, parent=s.parent, via=s.space, cos=s.hit.score)
        rows.append(row)
    columns = [
        "model_id",
        "layer",
        "head",
        "kind",
        "side",
        "sv_index",
        "sigma",
        "hop",
        "parent",
        "via",
        "sign",
        "cos",
        "direction_id",
        "tokens",
    ]
    if fmt == "table":
        for (model_id, layer), group in _grouped(rows):
            click.echo(f"\n{model_id} layer {layer}")
            emit(group, [c for c in columns if c not in ("model_id", "layer")], fmt)
    else:
        emit(rows, columns, fmt)


def _grouped(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, int], list[dict[str, Any]]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model_id"], r["layer"]), []).append(r)
    return list(groups.items())


@click.command()
@click.argument("target", nargs=-1, required=True)
@click.option(
    "--top",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Singular directions shown on a matrix card.",
)
@click.option("--tokens", "n_tokens", type=click.IntRange(1), default=8, show_default=True)
@format_option
@click.pass_obj
def show(obj: dict[str, Any], target: tuple[str, ...], top: int, n_tokens: int, fmt: str) -> None:
    """A card: `show ID` (one direction) or `show MODEL LAYER HEAD` (HEAD: a head number, or
    mlp_in / mlp_gate / mlp_out)."""
    import atlas
    from atlas.errors import AtlasError
    from query.cards import direction_card, matrix_card

    with atlas.open(obj["atlas"]) as a:
        if len(target) == 1 and target[0].isdigit():
            card = direction_card(a, int(target[0]))
            _print_direction(card, fmt)
        elif len(target) == 3 and target[1].isdigit():
            card = matrix_card(a, target[0], int(target[1]), target[2], top)
            _print_matrix(card, n_tokens, fmt)
        else:
            raise AtlasError("give a direction id, or MODEL LAYER HEAD")


def _print_direction(card: dict[str, Any], fmt: str) -> None:
    import json

    if fmt != "table":
        click.echo(json.dumps(card, default=str, ensure_ascii=False, indent=1))
        return
    where = f"layer {card['layer']}" + (f" head {card['head']}" if card["head"] is not None else "")
    click.echo(
        f"direction {card['direction_id']}: {card['model_id']} {where} {card['kind']} "
        f"{card['side']} sv{card['sv_index']}  sigma={card['sigma']:.4g}  "
        f"gap={card['sv_gap']:.2e}"
    )
    if card["degenerate"]:
        click.echo(
            f"  near-degenerate (group from sv{card['degenerate_group']}): only the "
            "group's span is meaningful, not this vector alone"
        )
    if card["partner_id"] is not None:
        click.echo(
            f"  partner ({'write' if card['side'] == 'read' else 'read'} side): "
            f"{card['partner_id']}"
        )
    for polarity in ("pos", "neg"):
        toks = [t for t in card["tokens"] if t["polarity"] == polarity]
        click.echo(
            f"  {'+' if polarity == 'pos' else '-'} "
            + ", ".join(f"{t['token_display']} ({t['score']:.3f})" for t in toks)
        )
    if card["top_neurons"]:
        click.echo(
            "  top neurons: "
            + ", ".join(f"{n['neuron']} ({n['weight']:+.3f})" for n in card["top_neurons"])
        )


def _print_matrix(card: dict[str, Any], n_tokens: int, fmt: str) -> None:
    import json

    if fmt != "table":
        click.echo(json.dumps(card, default=str, ensure_ascii=False, indent=1))
        return
    where = f"layer {card['layer']}" + (f" head {card['head']}" if card["head"] is not None else "")
    click.echo(
        f"{card['model_id']} {where} {card['kind']} ({card['n_rows']}x{card['n_cols']}, "
        f"rank {card['rank']})"
    )
    click.echo(
        f"  sigma_max {card['sigma_max']:.4g}  frobenius {card['frobenius_norm']:.4g}  "
        f"stable rank {card['stable_rank']:.3g}  effective rank "
        f"{card['effective_rank']:.3g}"
    )
    spectrum = card["spectrum"]
    click.echo(
        "  spectrum: "
        + " ".join(f"{s:.3g}" for s in spectrum[:16])
        + (f" ... ({len(spectrum)} values)" if len(spectrum) > 16 else "")
    )
    rows = []
    for d in card["directions"]:
        row = {"sv": f"{d['sv_index']}{'~' if d['degenerate'] else ''}", "sigma": d["sigma"]}
        for side in ("write", "read"):
            if f"{side}_id" in d:
                row[f"{side} +"] = (d[f"{side}_pos"] or [])[:n_tokens]
                row[f"{side} -"] = (d[f"{side}_neg"] or [])[:n_tokens]
        rows.append(row)
    columns = ["sv", "sigma"] + [
        c for c in ("write +", "write -", "read +", "read -") if any(c in r for r in rows)
    ]
    emit(rows, columns, "table")


COMMANDS = [sql, search, trace, show]
