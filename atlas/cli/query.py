"""`svd-atlas sql`, `search`, `trace` and `show`: reading an atlas (no torch imported)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from atlas.cli.output import (
    MAX_TABLE_ROWS,
    dumps,
    emit,
    format_option,
    print_table,
    text_or_json_option,
)
from atlas.cli.params import REFERENCE, options, render
from atlas.cli.result_file import (
    OUT_FORMATS,
    FirstRows,
    out_format,
    output_file,
    write_result,
    write_rows,
)
from atlas.errors import AtlasError
from atlas.interface import (
    DEFAULT_MEMORY_LIMIT,
    HIT_FIELDS,
    TABLES,
    TRACE_FIELDS,
    VIEWS,
    format_bytes,
    result_rows,
)
from atlas.params import (
    MatrixCardParams,
    SearchParams,
    SqlParams,
    TraceParams,
    cli_flag,
    validate,
)

DEFAULT_TOKENS = 8
# Where a read side's tokens through W_E are those through W_U (a tied embedding), once is enough.
SAME_READOUT = "the same tokens as through W_U (its embedding reads as its unembedding writes)"


def memory_limit_option(fn: Any) -> Any:
    """``--memory-limit``: the bound on the memory of the atlas's session (``atlas.open``'s
    ``memory_limit``), checked by the library so the CLI and Python refuse the same values."""
    return click.option(
        "--memory-limit",
        envvar="SVD_ATLAS_MEMORY_LIMIT",
        default=format_bytes(DEFAULT_MEMORY_LIMIT).replace(" ", ""),
        show_default=True,
        metavar="SIZE",
        help="Memory the atlas's queries may use together (e.g. 512MB, 8GB; env "
        "SVD_ATLAS_MEMORY_LIMIT); a query that needs more is stopped with one line. Nothing "
        "is ever spilled to disk.",
    )(fn)


@click.command(
    help=f"""Run one SQL statement against the atlas: read-only unless --write.

    Tables: {", ".join(TABLES)}. Views: {", ".join(VIEWS)}.

    Read-only means read-only: the model data is attached read-only, the session cannot open
    any other file (read_text, glob, COPY ... TO and ATTACH are refused by DuckDB itself), and
    a statement runs in a transaction that is rolled back. --write keeps your own tables in
    the atlas's user.duckdb and nowhere else. Ctrl-C or --timeout stops a runaway query, and
    --memory-limit bounds its memory.
    """
)
@options(SqlParams)
@click.option("--write", is_flag=True, help="Allow writes to your own tables (user.duckdb).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the result to a file (outside the atlas) in the format of its extension: "
    ".parquet (.pq), .csv, .json (one array) or .jsonl (.ndjson; one object per line).",
)
@click.option(
    "--out-format",
    "out_fmt",
    type=click.Choice(OUT_FORMATS),
    help="The format of --out whatever its extension.",
)
@click.option(
    "--timeout",
    type=float,  # the library refuses 0, nan and inf, in its words
    help="Stop the query after SECONDS.",
)
@memory_limit_option
@format_option
@click.pass_obj
def sql(
    obj: dict[str, Any],
    query: str,
    max_rows: str | None,
    write: bool,
    out: Path | None,
    out_fmt: str | None,
    timeout: float | None,
    memory_limit: str,
    fmt: str,
) -> None:
    import atlas

    if out is None and out_fmt is not None:
        raise AtlasError("--out-format is the format of --out: give --out FILE too")
    target = None if out is None else output_file(out, obj["atlas"])
    if out is not None:
        out_fmt = out_format(out, out_fmt)
    cap = validate(SqlParams, query=query, max_rows=max_rows).max_rows
    # files and csv or json go out as the rows come (a result may be larger than memory);
    # a table shows its first MAX_TABLE_ROWS, so no more are read
    with atlas.open(obj["atlas"], write=write, memory_limit=memory_limit) as a:
        first = FirstRows(cap)
        if target is not None and out_fmt is not None:
            written = a.sql_stream(
                query, lambda r: write_result(first.of(r), target, out_fmt), timeout=timeout
            )
            click.echo(f"wrote {written} rows to {out} ({out_fmt})", err=True)
            _note_cut(first.cut, cap)
            return
        if fmt != "table":
            a.sql_stream(query, lambda r: write_rows(first.of(r), sys.stdout, fmt), timeout=timeout)
            _note_cut(first.cut, cap)
            return
        shown = MAX_TABLE_ROWS if cap is None else cap
        result = a.sql(query, timeout=timeout, max_rows=shown + 1)  # one more tells there are
    names, rows = result_rows(result)
    records = [dict(zip(names, row, strict=True)) for row in rows]
    if cap is None and len(records) > MAX_TABLE_ROWS:  # how many more is not computed
        print_table(records[:MAX_TABLE_ROWS], names)
        click.echo(f"... more rows: the table shows the first {MAX_TABLE_ROWS} (--format csv or "
                   "json, or --out FILE, for all of them)")  # fmt: skip
        return
    emit(records[:shown], names, fmt)
    _note_cut(len(records) > shown, cap)


def _note_cut(cut: bool, cap: int | None) -> None:
    if cut:
        click.echo(f"note: the first {cap} rows (--max-rows); more rows match", err=True)


def _tokens_option(fn: Any) -> Any:
    return click.option(
        "--tokens",
        "n_tokens",
        type=click.IntRange(1),
        default=DEFAULT_TOKENS,
        show_default=True,
        help="Tokens shown per direction in the table.",
    )(fn)


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
HIT_JSON_COLUMNS = HIT_FIELDS  # JSON: every field, as the server's API gives them


def _hit_row(hit: Any, n_tokens: int, fmt: str) -> dict[str, Any]:
    row = hit.to_dict()
    if fmt != "json":
        row["tokens"] = row["tokens"][:n_tokens]
        if hit.degenerate:
            row["sv_index"] = f"{hit.sv_index}~"
    return row


@click.command()
@click.argument("text", nargs=-1, metavar="[WORDS]...")
@click.option("--vector", type=click.Path(dir_okay=False), help="A residual-space vector (.npy).")
@options(SearchParams, exclude=REFERENCE["search"][1])
@_tokens_option
@format_option
@click.pass_obj
def search(
    obj: dict[str, Any], text: tuple[str, ...], n_tokens: int, fmt: str, **params: Any
) -> None:
    """Directions nearest to a concept: WORDS (one concept), --direction ID or --vector FILE.

    Both valences are matched: sign -1 means the concept sits in the direction's negative
    tokens. A ~ after sv_index marks a near-degenerate direction (only its group's span is
    meaningful).
    """
    import atlas

    with atlas.open(obj["atlas"]) as a:
        hits = a.search(list(text) if text else None, **params)
    columns = HIT_JSON_COLUMNS if fmt == "json" else HIT_COLUMNS
    if fmt != "json" and any(h.space == "token" for h in hits):
        columns = [*columns[:-1], "space", columns[-1]]  # scores that are not residual cosines
    emit([_hit_row(h, n_tokens, fmt) for h in hits], columns, fmt)


TRACE_COLUMNS = [  # the table's, under a heading of model and layer
    "direction_id",
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
    "tokens",
]


COMPOSITION_TRACE_COLUMNS = ["direction_id", "hop", "parent", "mode", "layer", "head", "kind",
                             "side", "sv_index", "sigma", "share", "tokens"]  # fmt: skip


@click.command()
@click.argument("direction_id", type=int)
@options(TraceParams)
@_tokens_option
@format_option
@click.pass_obj
def trace(obj: dict[str, Any], direction_id: int, n_tokens: int, fmt: str, **params: Any) -> None:
    """Every direction whose |cos| with DIRECTION_ID passes --min-cos, grouped by layer.

    In the direction's own model through residual space, in other models through token
    space. sign is the valence relative to DIRECTION_ID; parent is the direction each was
    reached from (with --hops > 1).

    --via composition follows an OV write direction to the query, key and value read
    directions of later heads that carry its composition (share: of the edge's score
    squared, at least --min-share); a value read continues through its head's output.
    """
    import atlas
    from atlas.api import CompositionTrace
    from atlas.cli.progress import HopProgress

    with atlas.open(obj["atlas"]) as a, HopProgress() as progress:
        steps = a.trace(direction_id, progress=progress, **params)
    if isinstance(steps, CompositionTrace):
        shown = steps if fmt == "json" else [{**r, "tokens": r["tokens"][:n_tokens]} for r in steps]
        emit(shown, COMPOSITION_TRACE_COLUMNS, fmt)
        return
    rows = [{**s.to_dict(), **_hit_row(s.hit, n_tokens, fmt)} for s in steps]
    if fmt == "json":
        emit(rows, TRACE_FIELDS, fmt)
        return
    if fmt == "csv":
        emit(rows, [TRACE_COLUMNS[0], "model_id", "layer", *TRACE_COLUMNS[1:]], fmt)
        return
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model_id"], r["layer"]), []).append(r)
    for (model_id, layer), group in groups.items():
        click.echo(f"\n{model_id} layer {layer}")
        emit(group, TRACE_COLUMNS, fmt)


@click.command()
@click.argument("target", nargs=-1, required=True)
@options(MatrixCardParams)
@_tokens_option
@text_or_json_option("text for reading, json (the whole card) for machines.")
@click.pass_obj
def show(
    obj: dict[str, Any], target: tuple[str, ...], n_tokens: int, fmt: str, **params: Any
) -> None:
    """A card: `show ID` (one direction) or `show MODEL LAYER HEAD` (HEAD: a head number, its
    OV circuit or with --circuit qk its QK circuit; or mlp_in / mlp_gate / mlp_out)."""
    import atlas

    if not (len(target) == 1 and target[0].isdigit()) and len(target) != 3:
        raise click.UsageError("give a direction id, or MODEL LAYER HEAD")
    if len(target) == 1:  # a matrix's options say nothing about one direction
        ctx = click.get_current_context()
        given = [n for n in params if ctx.get_parameter_source(n) != ParameterSource.DEFAULT]
        if given:
            flags = ", ".join(cli_flag(name) for name in given)
            raise click.UsageError(f"{flags}: a matrix's option; give MODEL LAYER HEAD")
    with atlas.open(obj["atlas"]) as a:
        card = a.card(int(target[0])) if len(target) == 1 else a.card(*target, **params)
    if fmt == "json":
        click.echo(dumps(card))
    elif len(target) == 1:
        _print_direction(card, n_tokens)
    else:
        _print_matrix(card, n_tokens)


def _print_direction(card: dict[str, Any], n_tokens: int) -> None:
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
        click.echo(f"  partner ({card['partner_side']} side): {card['partner_id']}")
    if card["coherence"] is not None:
        click.echo(
            f"  coherence: percentile {card['coherence_pct']:.1f} of the model's null (random "
            f"directions scored alike); raw P(a lenient judge names a theme) "
            f"{card['coherence']:.4f}, z {card['coherence_z']:.2f}"
        )
    from atlas.interface import table_cell

    readouts = [("W_U", card["tokens"])]
    same_readout = card["embed_same_as_unembed"]
    if card["embed_tokens"] is not None and not same_readout:
        readouts.append(("W_E", card["embed_tokens"]))
    for basis, tokens in readouts:
        if len(readouts) > 1:
            click.echo("  through W_U:" if basis == "W_U" else "  reads (W_E):")
        for polarity in ("pos", "neg"):
            toks = [t for t in tokens if t["polarity"] == polarity][:n_tokens]
            click.echo(
                f"  {'+' if polarity == 'pos' else '-'} "
                + ", ".join(f"{table_cell(t['token_display'])} ({t['score']:.3f})" for t in toks)
            )
    if same_readout:
        click.echo(f"  reads (W_E): {SAME_READOUT}")
    if card["embed_missing"]:
        missing = render(card["embed_missing"], click.get_current_context(silent=True))
        click.echo(f"  reads (W_E): none stored; {missing}")
    if card["top_neurons"]:
        click.echo(
            "  top neurons: "
            + ", ".join(f"{n['neuron']} ({n['weight']:+.3f})" for n in card["top_neurons"])
        )


def _print_matrix(card: dict[str, Any], n_tokens: int) -> None:
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
    if card["kind"] == "qk" and card["positional_embedding"] == "rotary":
        click.echo(f"  {ROTARY_NOTE}")
    if card.get("qk") is not None:
        _print_circuits(card)
    elif card.get("circuits_missing"):
        missing = render(card["circuits_missing"], click.get_current_context(silent=True))
        click.echo(f"  circuits: none stored; {missing}")
    rows = []
    sides = card["sides"]
    embedded = {side: "reads (W_E) +" if side == "read" else f"{side} (W_E) +" for side in sides}
    for d in card["directions"]:
        row = {"sv": f"{d['sv_index']}{'~' if d['degenerate'] else ''}", "sigma": d["sigma"]}
        for side in sides:
            if f"{side}_id" in d:
                row[f"{side} +"] = (d[f"{side}_pos"] or [])[:n_tokens]
                row[f"{side} -"] = (d[f"{side}_neg"] or [])[:n_tokens]
        for side in sides:
            embed = d.get(f"{side}_embed_pos")
            if embed is not None and not card["embed_same_as_unembed"]:
                row[embedded[side]] = embed[:n_tokens]
        rows.append(row)
    shown = [c for side in sides for c in (f"{side} +", f"{side} -")]
    columns = ["sv", "sigma"] + [
        c for c in (*shown, *embedded.values()) if any(c in r for r in rows)
    ]
    emit(rows, columns, "table")
    if card["embed_same_as_unembed"]:
        click.echo(f"  reads (W_E): {SAME_READOUT}")
    if card.get("embed_missing"):
        missing = render(card["embed_missing"], click.get_current_context(silent=True))
        click.echo(f"  reads (W_E): none stored; {missing}")


ROTARY_NOTE = "rotary: the content part; positions rotate it"


def _print_circuits(card: dict[str, Any]) -> None:
    """A head card's circuits: its QK spectrum, eigenvalue scores and strongest edges."""
    qk = card["qk"]
    click.echo(
        f"  eigenvalue positivity: ov {card['eigen_positivity']:+.3f} (copying > 0)  "
        f"qk {qk['eigen_positivity']:+.3f} (matching > 0)"
    )
    rotary = card["positional_embedding"] == "rotary"
    note = f"  ({ROTARY_NOTE})" if rotary else ""
    click.echo(f"  qk sigma_max {qk['sigma_max']:.4g}  stable rank {qk['stable_rank']:.3g}{note}")
    click.echo(
        "  qk spectrum: "
        + " ".join(f"{s:.3g}" for s in qk["spectrum"][:16])
        + (f" ... ({len(qk['spectrum'])} values)" if len(qk["spectrum"]) > 16 else "")
    )
    for end, title, layer, head in (("in", "fed by", "src_layer", "src_head"),
                                    ("out", "feeds", "dst_layer", "dst_head")):  # fmt: skip
        edges = card["composition"][end]
        shown = ", ".join(
            f"{e['mode']} L{e[layer]}H{e[head]} {e['score']:.3g} (x{e['relative']:.2g})"
            for e in sorted(edges, key=lambda e: -e["score"])[:6]
        )
        click.echo(f"  {title}: {shown or 'none'}")


COMMANDS = [sql, search, trace, show]
