"""Cards: everything the atlas knows about one matrix (a head or an MLP) or one direction.

A direction's tokens are through W_U (``tokens``: what it writes, or would write, into the
logits); a read side's also through W_E (``embed_tokens``: which input tokens it reads), or,
for a model atlased by an older format, ``embed_missing``: the line that says why it has none.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from atlas.core.contents import contents_refusal
from atlas.core.contract import EMBED_SIDES, HEAD_KINDS, JUDGED_SQL, KINDS, SIDES_OF
from atlas.core.errors import AtlasError, BadParameter, NotFound
from atlas.core.reader import Reader, check_direction_id
from atlas.core.views import direction_tokens_sql

DEFAULT_TOP = 10  # directions a matrix card shows
EMBED_READOUT = "readout through the embedding W_E"  # what a model of an older format lacks
MATRIX_COLUMNS = (
    "matrix_id, model_id, layer, head, kind, n_rows, n_cols, rank, numerical_rank, sigma_max, "
    "frobenius_norm, stable_rank, effective_rank, eigen_positivity, coherence, coherence_z, "
    "coherence_pct, spectrum"
)


def matrix_card(
    a: Reader,
    model_id: str,
    layer: Any,
    head_or_kind: Any,
    top: int = DEFAULT_TOP,
    offset: int = 0,
    circuit: str = "ov",
) -> dict[str, Any]:
    """A head's ``circuit`` (``head_or_kind`` a head number; ``ov`` or ``qk``) or an MLP matrix
    (a kind name), with its directions ``offset`` to ``offset + top`` (by sv_index) on each of
    its ``sides``."""
    a.require_model(model_id)
    layer = _number(layer, "LAYER")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AtlasError(f"top must be an integer of at least 1, not {top!r}")
    offset = _number(offset, "offset")
    if circuit not in HEAD_KINDS:
        raise BadParameter(
            f"must be one of {', '.join(HEAD_KINDS)}, not {circuit!r}", param="circuit"
        )
    if not isinstance(head_or_kind, str) or head_or_kind.isdigit():
        kind, head = circuit, _number(head_or_kind, "HEAD")
    elif head_or_kind in KINDS and head_or_kind not in HEAD_KINDS:
        if circuit != "ov":
            raise BadParameter(
                f"{circuit} is a head's circuit; an MLP matrix ({head_or_kind}) has none",
                param="circuit",
            )
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
        check_place(a, model_id, layer, head)  # a layer or head the model lacks, named
        raise NotFound(
            f"no {kind} matrix at layer {layer}"
            + (f" head {head}" if head is not None else "")
            + f" in {model_id!r}"
        )
    # its sides as shown: what it writes first (write, read; query, key)
    card = rows[0] | {"sides": sorted(SIDES_OF[kind], key=lambda side: side != "write")}
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
    if not directions and offset > 0:  # paged past the stored directions
        (stored,) = a.sql(
            f"SELECT count(DISTINCT sv_index) AS n FROM {a.relation(model_id, 'directions')} "
            "WHERE matrix_id = ?",
            [card["matrix_id"]],
        )["n"].to_pylist()
        raise NotFound(
            f"no direction from sv_index {offset} on: the matrix has {stored} stored "
            f"(sv_index 0 to {stored - 1})",
            param="offset",
        )
    by_sv: dict[int, dict[str, Any]] = {}
    for d in directions:
        entry = by_sv.setdefault(
            d["sv_index"],
            {"sv_index": d["sv_index"], "sigma": d["sigma"], "degenerate": d["degenerate"]},
        )
        entry[f"{d['side']}_id"] = d["direction_id"]
        entry[f"{d['side']}_pos"] = d["pos_tokens"]
        entry[f"{d['side']}_neg"] = d["neg_tokens"]
    embedded = _embed_lists(a, model_id, [d["direction_id"] for d in directions])
    for d in directions:
        if d["side"] in EMBED_SIDES:
            pos, neg = embedded.get(d["direction_id"], (None, None))
            by_sv[d["sv_index"]] |= {f"{d['side']}_embed_pos": pos, f"{d['side']}_embed_neg": neg}
    card["directions"] = [by_sv[i] for i in sorted(by_sv)]
    card["embed_same_as_unembed"] = _same_readouts(card["directions"])
    refusal = contents_refusal(model_id, a.contents_version(model_id), EMBED_READOUT)
    card["embed_missing"] = str(refusal) if refusal else None
    return card


def check_place(a: Reader, model_id: str, layer: int, head: int | None) -> None:
    """:class:`NotFound` naming the parameter and the model's range for a layer (or head)
    that ``model_id`` does not have; nothing otherwise."""
    (info,) = a.sql(f"SELECT n_layers, n_heads FROM {a.relation(model_id, 'models')}").to_pylist()
    n_layers, n_heads = info["n_layers"], info["n_heads"]
    if not 0 <= layer < n_layers:
        raise NotFound(f"{model_id!r} has no layer {layer} (layers 0 to {n_layers - 1})",
                       param="layer")  # fmt: skip
    if head is not None and not 0 <= head < n_heads:
        raise NotFound(
            f"{model_id!r} has no head {head} in layer {layer} (heads 0 to {n_heads - 1})",
            param="head",
        )


def _embed_lists(
    a: Reader, model_id: str, ids: list[int]
) -> dict[int, tuple[list[str], list[str]]]:
    """Each of ``ids``' top and bottom tokens through W_E (read sides only have them)."""
    rows = a.sql(
        "SELECT direction_id, "
        "list(token_display ORDER BY rank) FILTER (WHERE polarity = 'pos') AS pos, "
        "list(token_display ORDER BY rank) FILTER (WHERE polarity = 'neg') AS neg "
        f"FROM {a.relation(model_id, 'top_tokens')} "
        "WHERE basis = 'embed' AND list_contains(?, direction_id) GROUP BY direction_id",
        [ids],
    ).to_pylist()
    return {r["direction_id"]: (r["pos"], r["neg"]) for r in rows}


def _same_readouts(directions: list[dict[str, Any]]) -> bool:
    """Whether every read side's tokens through W_E are its tokens through W_U (a tied model;
    interfaces then say so once instead of listing both)."""
    pairs = [
        (d[key], d[key.replace("_embed", "")])
        for d in directions
        for key in d
        if key.endswith(("_embed_pos", "_embed_neg"))
    ]
    return bool(pairs) and all(embed == unembed for embed, unembed in pairs)


def _ranked(tokens: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(t["polarity"], t["rank"], t["token"]) for t in tokens]


def _without_basis(token: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in token.items() if k != "basis"}


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
    # one statement for the row, its tokens and its neurons (each statement costs about 2 ms
    # at 1e6 directions, whatever it reads): each subquery filters on the id itself, so that
    # DuckDB skips the row groups of other directions as it does for a plain lookup
    card = a.sql(
        "SELECT d.direction_id, d.model_id, d.layer, d.head, d.kind, d.side, d.sv_index, d.sigma, "
        "d.sv_gap, d.degenerate, d.degenerate_group, d.matrix_id, d.coherence, d.coherence_z, "
        "d.coherence_pct, "
        "(SELECT list({'basis': basis, 'polarity': polarity, 'rank': rank, "
        "'token_display': token_display, 'token': token, 'score': score} "
        f"ORDER BY polarity DESC, rank) FROM {top_tokens} WHERE direction_id = ?) AS tokens, "
        "(SELECT list({'rank': rank, 'neuron': neuron, 'weight': weight} ORDER BY rank) "
        f"FROM {a.relation(model_id, 'top_neurons')} WHERE direction_id = ?) AS neurons "
        f"FROM {directions} d WHERE direction_id = ?",
        [direction_id] * 3,
    ).to_pylist()[0]
    tokens = card.pop("tokens") or []
    card["tokens"] = [_without_basis(t) for t in tokens if t["basis"] == "unembed"]
    card["embed_tokens"] = None
    card["embed_same_as_unembed"] = False
    card["embed_missing"] = None
    if card["side"] in EMBED_SIDES:
        refusal = contents_refusal(model_id, a.contents_version(model_id), EMBED_READOUT)
        if refusal is None:
            card["embed_tokens"] = [_without_basis(t) for t in tokens if t["basis"] == "embed"]
            # a tied model's two readouts are one: interfaces say so instead of listing both
            card["embed_same_as_unembed"] = _ranked(card["embed_tokens"]) == _ranked(card["tokens"])
        else:
            card["embed_missing"] = str(refusal)
    # the partner: the other side of its triple (read and write, query and key); an MLP's
    # other side lives in neuron space
    card["partner_side"] = next((s for s in SIDES_OF[card["kind"]] if s != card["side"]), None)
    card["partner_id"] = (
        a.partner(model_id, direction_id, card["matrix_id"], card["sv_index"])
        if card["partner_side"]
        else None
    )
    card["top_neurons"] = card.pop("neurons") or []
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
