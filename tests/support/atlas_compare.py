"""Comparing two atlases table by table, and their FAISS neighbours, for the exchange tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from atlas.api import Atlas
from atlas.core.vectors import vector_matrix

# Every table in a canonical row order.
TABLE_ORDER = {
    "models": "model_id",
    "matrices": "matrix_id",
    "directions": "direction_id",
    "top_tokens": "direction_id, polarity, rank",
    "top_neurons": "direction_id, rank",
    "vocab": "model_id, token_id",
    "token_bags": "direction_id, token_norm",
    "coherence_null": "model_id, scope, sample",
}


def table(a: Atlas, name: str, where: str = "") -> pa.Table:
    return a.sql(f"SELECT * FROM {name} {where} ORDER BY {TABLE_ORDER[name]}")


def assert_tables_equal(a: Atlas, b: Atlas, exclude: tuple[str, ...] = ()) -> None:
    """Every table of ``a`` equals ``b``'s: same columns, types, rows and values."""
    for name in TABLE_ORDER:
        left, right = table(a, name), table(b, name)
        keep = [c for c in left.column_names if c not in exclude]
        assert left.num_rows > 0, name
        assert sorted(left.column_names) == sorted(right.column_names), name
        assert left.select(keep).equals(right.select(keep)), f"table {name} differs"


def vectors(a: Atlas, model_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(direction_ids, vectors)`` of one model, in direction_id order."""
    t = a.sql(
        "SELECT direction_id, vector FROM directions WHERE model_id = ? ORDER BY direction_id",
        [model_id],
    )
    ids = t["direction_id"].to_numpy()
    return ids, vector_matrix(t["vector"])


def query_set(a: Atlas, model_id: str, n: int = 200, seed: int = 0) -> np.ndarray:
    """``n`` of the model's own directions as queries, and ``n`` random unit vectors."""
    rng = np.random.default_rng(seed)
    _, vecs = vectors(a, model_id)
    own = vecs[rng.choice(len(vecs), n, replace=False)]
    rand = rng.standard_normal((n, vecs.shape[1])).astype(np.float32)
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    return np.ascontiguousarray(np.vstack([own, rand]), dtype=np.float32)


def neighbours(a: Atlas, model_id: str, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-``k`` direction ids by inner product, from the model's FAISS index."""
    _, ids = a.residual_index(model_id).search(queries, k)
    return ids


def brute_force(a: Atlas, model_id: str, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """The same neighbours with numpy only (the oracle for the FAISS index)."""
    ids, vecs = vectors(a, model_id)
    scores = queries @ vecs.T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))
