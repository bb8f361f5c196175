"""Comparing two atlases table by table, their search results and their FAISS neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

import atlas
from atlas.api import Atlas
from atlas.core.vectors import vector_matrix

FLOAT_COLUMNS = {"sigma", "sv_gap", "sigma_max", "frobenius_norm", "stable_rank",
                 "effective_rank", "score", "weight", "coherence", "coherence_pos",
                 "coherence_neg", "coherence_z", "coherence_pct"}  # fmt: skip
VOLATILE = {"stage_seconds", "ingested_at", "versions", "spec", "source"}

# Every table in a canonical row order.
TABLE_ORDER = {
    "models": "model_id",
    "matrices": "matrix_id",
    "directions": "direction_id",
    "top_tokens": "direction_id, basis, polarity, rank",
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
        # every table has rows, but a coherence null where the atlas was ingested without one
        assert left.num_rows > 0 or name == "coherence_null", name
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


def assert_same_atlas(a: Path, b: Path) -> None:
    """Two atlases made of the same models the same way (streamed or whole, serially or on
    Ray) hold the same rows, ids included: floats to float32 rounding, vectors to 1e-5, and
    give the same search results in every model."""
    with atlas.open(a) as left, atlas.open(b) as right:
        for name in TABLE_ORDER:
            x, y = table(left, name), table(right, name)
            assert x.num_rows == y.num_rows, name
            for column in x.column_names:
                if column in VOLATILE:
                    continue
                u, v = x[column].to_pylist(), y[column].to_pylist()
                if column == "vector":  # one per direction; widths differ between models
                    for s, t in zip(u, v, strict=True):
                        np.testing.assert_allclose(s, t, atol=1e-5)
                elif column in FLOAT_COLUMNS:
                    np.testing.assert_allclose(
                        np.array(u, float), np.array(v, float), rtol=1e-5, atol=1e-6
                    )
                elif column == "spectrum":  # one list per matrix; their lengths differ by kind
                    for s, t in zip(u, v, strict=True):
                        np.testing.assert_allclose(s, t, rtol=1e-5, atol=1e-7)
                else:  # ids, layers, heads, kinds, signs (through the tokens), token ids ...
                    assert u == v, (name, column)
        assert left.model_ids() == right.model_ids()
        for model_id in left.model_ids():
            first = left.sql("SELECT min(direction_id) AS d FROM directions WHERE model_id = ?",
                             [model_id])["d"][0].as_py()  # fmt: skip
            for query in ({"text": "fire"}, {"direction": first + 5},
                          {"text": "water", "kind": "ov"}):  # fmt: skip
                got = [(h.direction_id, h.sign) for h in left.search(**query, model=model_id)]
                expected = [(h.direction_id, h.sign)
                            for h in right.search(**query, model=model_id)]  # fmt: skip
                assert got == expected, (model_id, query)
        if len(left.model_ids()) > 1:  # token space, across the models
            hits = [[(h.direction_id, h.sign) for h in x.search("fire water", k=20)]
                    for x in (left, right)]  # fmt: skip
            assert hits[0] == hits[1]
