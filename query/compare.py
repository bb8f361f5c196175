"""Comparing two models of one atlas matrix by matrix (finding B.i: weight processing).

Typical use: the same model ingested with ``--processing raw`` and ``--processing tl``. Matrices
are matched by (kind, layer, head); within a matrix the judged directions (``ov`` and
``mlp_out`` write side, ``qk`` key side, ``mlp_in``/``mlp_gate`` read side) are matched two ways: by
``sv_index``, and by best absolute cosine (processing can reorder nearly equal singular values).

Per matrix:

- ``sigma_change``: mean over sv_index of ``|sigma_B - sigma_A| / sigma_A``, where sigma_A is
  not zero to float32 precision (a LayerNorm fold's null direction divided rounding noise by
  rounding noise: 4e4 for a matrix whose real changes were 0.04);
- ``spectrum_corr``: Pearson correlation of the two spectra;
- ``overlap_index``: mean top-token overlap of the directions with the same sv_index;
- ``match_cos``: mean over A's directions of the best ``|cos|`` with a direction of B;
- ``overlap_match``: mean top-token overlap with that best-cosine partner;
- ``reordered``: fraction of A's directions whose best partner has another sv_index;
- ``coherence_a``/``coherence_b``/``coherence_diff``: the matrix coherence (B - A);
- ``dir_coherence_diff``: mean direction coherence difference at equal sv_index.

Top-token overlap of two directions: the shared tokens of their top-k positive and negative
lists over ``2k``, taking the better of the two sign alignments (a direction's sign is a
convention, and processing may flip it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.core.contract import JUDGED_SQL, KINDS
from atlas.core.errors import AtlasError
from atlas.core.reader import Reader
from atlas.models.rank import numerically_zero

METRICS = (
    "sigma_change",
    "spectrum_corr",
    "overlap_index",
    "overlap_match",
    "match_cos",
    "reordered",
    "coherence_a",
    "coherence_b",
    "coherence_diff",
    "dir_coherence_diff",
)
COLUMNS = ("scope", "layer", "head", "kind", "n", *METRICS)  # where first, as in every listing
SHAPE = ("n_layers", "n_heads", "d_model", "d_vocab")

_JUDGED = f"({JUDGED_SQL})"


@dataclass
class _Matrix:
    """One matrix of one model: its judged directions in sv_index order."""

    sigma: np.ndarray
    vectors: np.ndarray
    coherence: np.ndarray
    pos: list[set[int]]
    neg: list[set[int]]
    head_coherence: float | None
    shape: tuple[int, int]


def compare(a: Reader, model_a: str, model_b: str) -> list[dict[str, Any]]:
    """Per-matrix rows (scope ``matrix``) then aggregates per kind and overall."""
    for m in (model_a, model_b):
        a.require_model(m)
    shapes = {
        r["model_id"]: tuple(r[c] for c in SHAPE)
        for r in a.sql(f"SELECT model_id, {', '.join(SHAPE)} FROM models").to_pylist()
    }
    if shapes[model_a] != shapes[model_b]:
        raise AtlasError(
            f"{model_a} and {model_b} differ in shape ({', '.join(SHAPE)}: "
            f"{shapes[model_a]} vs {shapes[model_b]}); compare needs two versions of one model"
        )
    k = int(
        a.sql(
            "SELECT min(top_k) AS k FROM models WHERE model_id IN (?, ?)", [model_a, model_b]
        ).to_pylist()[0]["k"]
    )
    left, right = _load(a, model_a, k), _load(a, model_b, k)
    rows = [
        {
            "scope": "matrix",
            "kind": key[0],
            "layer": key[1],
            "head": key[2],
            "n": 1,
            **_compare_matrix(left[key], right[key]),
        }
        for key in sorted(set(left) & set(right), key=_order)
    ]
    return rows + _aggregates(rows)


def _order(key: tuple[str, int, int | None]) -> tuple[int, int, int]:
    return KINDS.index(key[0]), key[1], -1 if key[2] is None else key[2]


def _load(a: Reader, model_id: str, k: int) -> dict[tuple[str, int, int | None], _Matrix]:
    dirs = a.sql(
        f"""
        SELECT d.direction_id, d.kind, d.layer, d.head, d.sv_index, d.sigma, d.vector,
               d.coherence, m.coherence AS head_coherence, m.n_rows, m.n_cols
        FROM directions d JOIN matrices m USING (matrix_id)
        WHERE d.model_id = ? AND {_JUDGED}
        ORDER BY d.kind, d.layer, d.head, d.sv_index
        """,
        [model_id],
    ).to_pylist()
    tokens = a.sql(
        f"""
        SELECT t.direction_id, t.polarity, list(t.token_id) AS ids
        FROM top_tokens t JOIN directions d USING (direction_id)
        WHERE d.model_id = ? AND {_JUDGED} AND t.rank < ? AND t.basis = 'unembed'
        GROUP BY ALL
        """,
        [model_id, k],
    ).to_pylist()
    lists = {(r["direction_id"], r["polarity"]): set(r["ids"]) for r in tokens}
    grouped: dict[tuple[str, int, int | None], list[dict[str, Any]]] = {}
    for r in dirs:
        grouped.setdefault((r["kind"], r["layer"], r["head"]), []).append(r)
    return {
        key: _Matrix(
            sigma=np.array([r["sigma"] for r in rs]),
            vectors=np.array([r["vector"] for r in rs], dtype=np.float64),
            coherence=np.array([np.nan if r["coherence"] is None else r["coherence"] for r in rs]),
            pos=[lists[(r["direction_id"], "pos")] for r in rs],
            neg=[lists[(r["direction_id"], "neg")] for r in rs],
            head_coherence=rs[0]["head_coherence"],
            shape=(rs[0]["n_rows"], rs[0]["n_cols"]),
        )
        for key, rs in grouped.items()
    }


def token_overlap(pos_a: set[int], neg_a: set[int], pos_b: set[int], neg_b: set[int]) -> float:
    """Shared top tokens over all listed, under the better sign alignment."""
    same = len(pos_a & pos_b) + len(neg_a & neg_b)
    flipped = len(pos_a & neg_b) + len(neg_a & pos_b)
    return max(same, flipped) / (len(pos_a) + len(neg_a))


def _sigma_change(x: _Matrix, y: _Matrix, r: int) -> float | None:
    """The mean relative change of the first ``r`` singular values that A holds (None for a
    zero matrix)."""
    held = ~numerically_zero(x.sigma[None, :r], x.shape)[0]
    if not held.any():
        return None
    return float(np.mean(np.abs(y.sigma[:r] - x.sigma[:r])[held] / x.sigma[:r][held]))


def _compare_matrix(x: _Matrix, y: _Matrix) -> dict[str, float | None]:
    r = min(len(x.sigma), len(y.sigma))
    # unit vectors by contract: a product of float32 roundings can pass 1 by an ulp
    cos = np.minimum(np.abs(x.vectors[:r].astype(np.float64) @ y.vectors[:r].T), 1.0)
    match = cos.argmax(axis=1)
    by_index = [token_overlap(x.pos[i], x.neg[i], y.pos[i], y.neg[i]) for i in range(r)]
    by_match = [token_overlap(x.pos[i], x.neg[i], y.pos[j], y.neg[j]) for i, j in enumerate(match)]
    corr = np.corrcoef(x.sigma[:r], y.sigma[:r])[0, 1] if r > 1 else np.nan
    ha, hb = x.head_coherence, y.head_coherence
    return _clean(
        {
            "sigma_change": _sigma_change(x, y, r),
            "spectrum_corr": float(corr),
            "overlap_index": float(np.mean(by_index)),
            "overlap_match": float(np.mean(by_match)),
            "match_cos": float(cos.max(axis=1).mean()),
            "reordered": float(np.mean(match != np.arange(r))),
            "coherence_a": ha,
            "coherence_b": hb,
            "coherence_diff": None if ha is None or hb is None else hb - ha,
            "dir_coherence_diff": float(np.mean(y.coherence[:r] - x.coherence[:r])),
        }
    )


def _clean(row: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None or np.isnan(v) else v for k, v in row.items()}


def _aggregates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of each metric over the matrices of each kind, and over all matrices."""
    out = []
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    for kind in [*kinds, "all"]:
        members = [r for r in rows if kind in ("all", r["kind"])]
        agg: dict[str, Any] = {"scope": "aggregate", "kind": kind, "layer": None, "head": None}
        agg["n"] = len(members)
        for m in METRICS:
            values = [r[m] for r in members if r[m] is not None]
            agg[m] = float(np.mean(values)) if values else None
        out.append(agg)
    return out
