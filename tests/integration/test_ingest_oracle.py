"""The stored SVDs of the bundled MiniLM against numpy on the raw checkpoint (tests/oracle.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import atlas
from tests.support import oracle

# slow: every MiniLM matrix against numpy (the fast tier has test_oracle_folders)
pytestmark = pytest.mark.slow

JUDGED_SIDE = {"ov": "write", "mlp_in": "read", "mlp_out": "write"}


@pytest.fixture(scope="module")
def directions(minilm_atlas: Path) -> dict[str, np.ndarray]:
    """Every stored direction of MiniLM, read once."""
    with atlas.open(minilm_atlas) as a:
        rows = a.sql(
            "SELECT kind, layer, coalesce(head, -1) AS head, sv_index, side, sigma, sv_gap, "
            "degenerate, vector FROM directions WHERE model_id = 'minilm' "
            "ORDER BY kind, layer, head, sv_index, side"
        ).to_pydict()
    out = {k: np.array(v) for k, v in rows.items() if k != "vector"}
    out["vector"] = np.array(rows["vector"], dtype=np.float64)
    return out


def stored(table: dict[str, np.ndarray], kind: str, layer: int, head: int | None):
    """One matrix's stored rows, as arrays indexed by sv_index (side -> [r, d_model])."""
    wanted_head = -1 if head is None else head
    mine = (table["kind"] == kind) & (table["layer"] == layer) & (table["head"] == wanted_head)
    out: dict[str, np.ndarray] = {}
    for side in ("read", "write"):
        rows = mine & (table["side"] == side)
        if rows.any():
            out[side] = table["vector"][rows]
            out["sigma"] = table["sigma"][rows]
            out["gap"] = table["sv_gap"][rows]
            out["degenerate"] = table["degenerate"][rows]
    return out


def oracle_svd(matrix: np.ndarray, rank: int, W_Uc: np.ndarray, judged: str):
    """numpy's SVD with the canonical sign rule applied by hand."""
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    judge = (v if judged == "write" else u).T @ W_Uc
    largest = judge[np.arange(rank), np.abs(judge).argmax(axis=1)]
    sign = np.sign(largest)
    return u * sign, s, v * sign


def assert_matches(got: dict[str, np.ndarray], matrix: np.ndarray, kind: str) -> None:
    rank = len(got["sigma"])
    u, s, v = oracle_svd(matrix, rank, oracle.centered_unembedding(), JUDGED_SIDE[kind])
    np.testing.assert_allclose(got["sigma"], s, rtol=1e-4, atol=1e-5 * s[0])
    expected = {"read": u.T, "write": v.T}
    ok = ~got["degenerate"]
    assert ok.sum() > 0.9 * rank, "almost every MiniLM direction is well separated"
    for side in ("read", "write"):
        if side not in got:
            continue
        # Davis–Kahan: a float32 SVD rotates a vector by about eps * sigma_max / gap.
        tol = 1e-5 + 2e-6 / got["gap"][ok]
        err = np.abs(got[side][ok] - expected[side][ok]).max(axis=1)
        assert (err < tol).all(), f"{kind} {side}: max error {err.max():.2e}"
        # Degenerate directions: only their joint span is defined; compare projectors.
        if (~ok).any():
            span_got = got[side][~ok].T @ got[side][~ok]
            span_exp = expected[side][~ok].T @ expected[side][~ok]
            assert np.abs(span_got - span_exp).max() < 1e-2


@pytest.mark.parametrize("layer", range(oracle.N_LAYERS))
def test_every_head_matches_numpy_svd_of_explicit_ov(directions, layer: int) -> None:
    for head in range(oracle.N_HEADS):
        got = stored(directions, "ov", layer, head)
        assert len(got["sigma"]) == oracle.D_HEAD
        assert_matches(got, oracle.ov_matrix(layer, head), "ov")


@pytest.mark.parametrize("kind", ["mlp_in", "mlp_out"])
def test_every_mlp_matrix_matches_numpy_svd(directions, kind: str) -> None:
    for layer in range(oracle.N_LAYERS):
        got = stored(directions, kind, layer, None)
        assert len(got["sigma"]) == 384
        assert_matches(got, oracle.mlp_matrix(layer, kind), kind)


def test_canonical_sign_rule_holds_for_every_judged_direction(minilm_atlas: Path) -> None:
    with atlas.open(minilm_atlas) as a:
        rows = a.sql("""
            SELECT d.kind, d.side,
                   max(score) FILTER (WHERE polarity = 'pos' AND t.rank = 0) AS top,
                   min(score) FILTER (WHERE polarity = 'neg' AND t.rank = 0) AS bottom
            FROM directions d JOIN top_tokens t USING (direction_id)
            WHERE d.side = CASE WHEN d.kind IN ('ov', 'mlp_out') THEN 'write'
                                WHEN d.kind = 'qk' THEN 'key' ELSE 'read' END
            GROUP BY d.direction_id, d.kind, d.side
        """).to_pydict()
    top, bottom = np.array(rows["top"]), np.array(rows["bottom"])
    assert len(top) == 2 * 72 * 32 + 6 * 384 * 2  # OV and QK heads, MLPs
    assert (top >= -bottom).all()


def test_top_tokens_equal_numpy_projection(minilm_atlas: Path) -> None:
    """A seventh of the directions (every kind, layer and side among them): the projection is
    one code path for all, and the full 13,824 x 30,522 score matrix costs more than it adds."""
    W_Uc = oracle.centered_unembedding().astype(np.float32)
    vocab = oracle.vocabulary()
    with atlas.open(minilm_atlas) as a:
        dirs = a.sql(
            "SELECT direction_id, vector FROM directions WHERE direction_id % 7 = 3 "
            "ORDER BY direction_id"
        ).to_pydict()
        toks = a.sql(
            "SELECT direction_id, polarity, rank, token_id, token, score FROM top_tokens "
            "WHERE direction_id % 7 = 3 AND basis = 'unembed' "
            "ORDER BY direction_id, polarity DESC, rank"
        ).to_pydict()
        k = a.sql("SELECT top_k FROM models").to_pylist()[0]["top_k"]
    vectors = np.array(dirs["vector"], dtype=np.float32)
    assert len(vectors) > 1000
    scores = vectors @ W_Uc
    top = -np.sort(-np.partition(scores, -k, axis=1)[:, -k:], axis=1)
    bottom = np.sort(np.partition(scores, k - 1, axis=1)[:, :k], axis=1)
    expected = np.concatenate([top, bottom], axis=1)
    got_scores = np.array(toks["score"]).reshape(len(vectors), 2 * k)
    got_ids = np.array(toks["token_id"]).reshape(len(vectors), 2 * k)
    np.testing.assert_allclose(got_scores, expected, atol=2e-4)
    own = np.take_along_axis(scores, got_ids, axis=1)
    np.testing.assert_allclose(own, got_scores, atol=2e-4)
    assert [vocab[i] for i in got_ids[:50].ravel()] == toks["token"][: 50 * 2 * k]
    assert np.array(toks["polarity"]).reshape(-1, 2 * k)[:, :k].tolist()[0] == ["pos"] * k
