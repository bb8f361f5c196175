"""Cards: everything the atlas knows about one matrix (a head or an MLP) or one direction."""

from __future__ import annotations

from typing import Any, Literal, get_args

from atlas.core.contract import HEAD_KINDS, JUDGED_SQL, KINDS
from atlas.core.errors import AtlasError, NotFound
from atlas.core.reader import Reader, check_direction_id
from atlas.core.views import direction_tokens_sql

DEFAULT_TOP = 10  # directions a matrix card shows
MATRIX_COLUMNS = (
    "matrix_id, model_id, layer, head, kind, n_rows, n_cols, rank, numerical_rank, sigma_max, "
    "frobenius_norm, stable_rank, effective_rank, eigen_positivity, coherence, coherence_z, "
    "coherence_pct, spectrum"
)


def matrix_card(
    a: Reader, model_id: str, layer: Any, head_or_kind: Any, top: int = DEFAULT_TOP, offset: int = 0
) -> dict[str, Any]:
    """A head (``head_or_kind`` a head number, kind ov) or an MLP matrix (a kind name), with
    its directions ``offset`` to ``offset + top`` (by sv_index)."""
    a.require_model(model_id)
    layer = _number(layer, "LAYER")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AtlasError(f"top must be an integer of at least 1, not {top!r}")
    offset = _number(offset, "offset")
    if not isinstance(head_or_kind, str) or head_or_kind.isdigit():
        kind, head = "ov", _number(head_or_kind, "HEAD")
    elif head_or_kind in KINDS and head_or_kind not in HEAD_KINDS:
        kind, head = head_or_kind, None
    else:
        raise AtlasError(
            f"HEAD must be a head number or one of mlp_in, mlp_gate, mlp_out, not {head_or_kind!r}"
        )
    rows = a.sql(
        f"SELECT {MATRIX_COLUMNS} FROM {a.relation(model_id, 'matrices')} "
        "WHERE layer = ? AND kind = ? AND head IS NOT DISTINCT FROM ?",
        [layer, kind, head],
    ).to_pylist()
    if not rows:
        raise NotFound(
            f"no {kind} matrix at layer {layer}"
            + (f" head {head}" if head is not None else "")
            + f" in {model_id!r}"
        )
    card = rows[0]
    rows_of_matrix = direction_tokens_sql(
        a.relation(model_id, "directions"),
        a.relation(model_id, "top_tokens"),
        "d.matrix_id = ? AND d.sv_index >= ? AND d.sv_index < ?",
    )
    directions = a.sql(
        "SELECT direction_id, sv_index, side, sigma, degenerate, pos_tokens, neg_tokens "
        f"FROM ({rows_of_matrix}) ORDER BY sv_index, side",
        [card["matrix_id"], offset, offset + top],
    ).to_pylist()
    by_sv: dict[int, dict[str, Any]] = {}
    for d in directions:
        entry = by_sv.setdefault(
            d["sv_index"],
            {"sv_index": d["sv_index"], "sigma": d["sigma"], "degenerate": d["degenerate"]},
        )
        entry[f"{d['side']}_id"] = d["direction_id"]
        entry[f"{d['side']}_pos"] = d["pos_tokens"]
        entry[f"{d['side']}_neg"] = d["neg_tokens"]
    card["directions"] = [by_sv[i] for i in sorted(by_sv)]
    return card


def _number(value: Any, what: str) -> int:
    """A layer or head number from an int or a string of digits; one clear line otherwise."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise AtlasError(f"{what} must be a number (0 or more), not {value!r}")


def direction_card(a: Reader, direction_id: int) -> dict[str, Any]:
    """One direction: where it is, its singular value and gap, tokens, partner, top neurons."""
    direction_id = check_direction_id(direction_id)
    model_id = a.model_of(direction_id)  # its own store's tables, not the atlas-wide views
    directions, top_tokens = a.relation(model_id, "directions"), a.relation(model_id, "top_tokens")
    card = a.sql(
        "SELECT d.direction_id, d.model_id, d.layer, d.head, d.kind, d.side, d.sv_index, d.sigma, "
        "d.sv_gap, d.degenerate, d.degenerate_group, d.matrix_id, d.coherence, d.coherence_z, "
        f"d.coherence_pct FROM {directions} d "
        "WHERE direction_id = ?",
        [direction_id],
    ).to_pylist()[0]
    card["tokens"] = a.sql(
        f"SELECT polarity, rank, token_display, token, score FROM {top_tokens} "
        "WHERE direction_id = ? ORDER BY polarity DESC, rank",
        [direction_id],
    ).to_pylist()
    partner = a.sql(
        f"SELECT direction_id FROM {directions} WHERE matrix_id = ? AND sv_index = ? "
        "AND direction_id <> ?",
        [card["matrix_id"], card["sv_index"], direction_id],
    ).to_pylist()
    card["partner_id"] = partner[0]["direction_id"] if partner else None
    card["top_neurons"] = a.sql(
        f"SELECT rank, neuron, weight FROM {a.relation(model_id, 'top_neurons')} "
        "WHERE direction_id = ? ORDER BY rank",
        [direction_id],
    ).to_pylist()
    return card


# What a model's matrices can be compared by (a model page's grid): a column of ``matrices``,
# or the coherence (raw, or its percentile of the model's null) of each matrix's top direction
# on its judged side.
MatrixStat = Literal[
    "sigma_max",
    "stable_rank",
    "effective_rank",
    "coherence",
    "coherence_pct",
    "top_coherence",
    "top_coherence_pct",
]
MATRIX_STATS: tuple[MatrixStat, ...] = get_args(MatrixStat)
_TOP_COHERENCE = (
    "(SELECT d.{column} FROM {directions} d WHERE d.matrix_id = m.matrix_id "
    f"AND d.sv_index = 0 AND ({JUDGED_SQL}) LIMIT 1)"
)


def matrix_stats(a: Reader, model_id: str, stat: str) -> list[dict[str, Any]]:
    """``layer, head, kind, value`` of every matrix of ``model_id``: its ``stat``."""
    a.require_model(model_id)
    if stat not in MATRIX_STATS:
        raise AtlasError(f"unknown statistic {stat!r}; choose one of {', '.join(MATRIX_STATS)}")
    column = (
        _TOP_COHERENCE.format(
            column=stat.removeprefix("top_"), directions=a.relation(model_id, "directions")
        )
        if stat.startswith("top_")
        else f"m.{stat}"
    )
    return a.sql(
        f"SELECT m.layer, m.head, m.kind, {column} AS value "
        f"FROM {a.relation(model_id, 'matrices')} m ORDER BY m.layer, m.kind, m.head"
    ).to_pylist()
