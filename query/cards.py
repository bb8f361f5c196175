"""Cards: everything the atlas knows about one matrix (a head or an MLP) or one direction."""

from __future__ import annotations

from typing import Any

from atlas.errors import AtlasError
from atlas.handle import Atlas
from atlas.schema import KINDS

MATRIX_COLUMNS = (
    "matrix_id, model_id, layer, head, kind, n_rows, n_cols, rank, numerical_rank, sigma_max, "
    "frobenius_norm, stable_rank, effective_rank, spectrum"
)


def matrix_card(
    a: Atlas, model_id: str, layer: int, head_or_kind: str, top: int = 10
) -> dict[str, Any]:
    """A head (``head_or_kind`` an integer, kind ov) or an MLP matrix (a kind name)."""
    a.store_path(model_id)
    if head_or_kind.isdigit():
        kind, head = "ov", int(head_or_kind)
    elif head_or_kind in KINDS and head_or_kind != "ov":
        kind, head = head_or_kind, None
    else:
        raise AtlasError(
            f"HEAD must be a head number or one of mlp_in, mlp_gate, mlp_out, not {head_or_kind!r}"
        )
    rows = a.sql(
        f"SELECT {MATRIX_COLUMNS} FROM matrices WHERE model_id = ? AND layer = ? AND kind = ? "
        "AND head IS NOT DISTINCT FROM ?",
        [model_id, layer, kind, head],
    ).to_pylist()
    if not rows:
        raise AtlasError(
            f"no {kind} matrix at layer {layer}"
            + (f" head {head}" if head is not None else "")
            + f" in {model_id!r}"
        )
    card = rows[0]
    directions = a.sql(
        "SELECT direction_id, sv_index, side, sigma, degenerate, pos_tokens, neg_tokens "
        "FROM direction_tokens WHERE matrix_id = ? AND sv_index < ? ORDER BY sv_index, side",
        [card["matrix_id"], top],
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


def direction_card(a: Atlas, direction_id: int) -> dict[str, Any]:
    """One direction: where it is, its singular value and gap, tokens, partner, top neurons."""
    a.model_of(direction_id)
    card = a.sql(
        "SELECT d.direction_id, d.model_id, d.layer, d.head, d.kind, d.side, d.sv_index, d.sigma, "
        "d.sv_gap, d.degenerate, d.degenerate_group, d.matrix_id FROM directions d "
        "WHERE direction_id = ?",
        [direction_id],
    ).to_pylist()[0]
    card["tokens"] = a.sql(
        "SELECT polarity, rank, token_display, token, score FROM top_tokens "
        "WHERE direction_id = ? ORDER BY polarity DESC, rank",
        [direction_id],
    ).to_pylist()
    partner = a.sql(
        "SELECT direction_id FROM directions WHERE matrix_id = ? AND sv_index = ? "
        "AND direction_id <> ?",
        [card["matrix_id"], card["sv_index"], direction_id],
    ).to_pylist()
    card["partner_id"] = partner[0]["direction_id"] if partner else None
    card["top_neurons"] = a.sql(
        "SELECT rank, neuron, weight FROM top_neurons WHERE direction_id = ? ORDER BY rank",
        [direction_id],
    ).to_pylist()
    return card
