"""The derived columns and views against independent oracles: numpy on the raw MiniLM checkpoint
for gaps, degeneracy and top neurons; plain SQL over the tables for the convenience views."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import atlas
from tests.support import oracle


@pytest.fixture(scope="module")
def a(minilm_atlas: Path) -> Iterator[atlas.Atlas]:
    with atlas.open(minilm_atlas) as handle:
        yield handle


def _numpy_gaps(s: np.ndarray, full_rank: int) -> np.ndarray:
    """Each singular value's distance to its nearest neighbour over sigma_max (beyond the last
    stored value the matrix has zeros when its rank is below its smaller side)."""
    padded = np.concatenate([s, [0.0]]) if full_rank > len(s) else s
    gaps = np.full(len(s), np.inf)
    for i in range(len(s)):
        for j in (i - 1, i + 1):
            if 0 <= j < len(padded):
                gaps[i] = min(gaps[i], abs(padded[i] - padded[j]))
    return np.where(np.isfinite(gaps), gaps / s[0], 1.0)


def _matrices() -> Iterator[tuple[str, int, int | None, np.ndarray]]:
    for layer in (0, oracle.N_LAYERS - 1):  # every layer is the same code: the first and last
        for head in (0, 5, 11):
            yield "ov", layer, head, oracle.ov_matrix(layer, head)
        for kind in ("mlp_in", "mlp_out"):
            yield kind, layer, None, oracle.mlp_matrix(layer, kind)


def test_gaps_and_degenerate_groups_equal_numpy(a: atlas.Atlas) -> None:
    tolerance = a.sql("SELECT gap_tolerance FROM models")["gap_tolerance"][0].as_py()
    flagged = 0
    for kind, layer, head, matrix in _matrices():
        rows = a.sql(
            "SELECT sv_index, sigma, sv_gap, degenerate, degenerate_group FROM directions "
            "WHERE kind = ? AND layer = ? AND head IS NOT DISTINCT FROM ? "
            "AND side = (CASE WHEN kind = 'mlp_in' THEN 'read' ELSE 'write' END) "
            "ORDER BY sv_index",
            [kind, layer, head],
        ).to_pydict()
        s = np.linalg.svd(matrix, compute_uv=False)
        rank = len(rows["sv_index"])
        full_rank = min(matrix.shape)
        gaps = _numpy_gaps(s[:rank], full_rank if rank < full_rank else rank)
        # the stored gaps come from float32-accurate singular values: compare to that accuracy
        np.testing.assert_allclose(rows["sv_gap"], gaps, atol=2e-6)
        clear = np.abs(gaps - tolerance) > 2e-6  # leave values on the threshold's edge alone
        assert (np.array(rows["degenerate"])[clear] == (gaps < tolerance)[clear]).all()
        # a degenerate run starts at its first member; everything else has no group
        for i in range(rank):
            if not rows["degenerate"][i]:
                assert rows["degenerate_group"][i] is None
                continue
            flagged += 1
            start = i
            while start > 0 and (s[start - 1] - s[start]) / s[0] < tolerance:
                start -= 1
            assert rows["degenerate_group"][i] == start, (kind, layer, head, i)
    assert flagged > 0  # MiniLM has near-degenerate MLP directions: the rule was exercised


def test_top_neurons_are_the_largest_entries_of_numpys_partner_vector(a: atlas.Atlas) -> None:
    W_Uc = oracle.centered_unembedding()
    for kind, layer in (("mlp_in", 1), ("mlp_out", 4)):
        matrix = oracle.mlp_matrix(layer, kind)
        u, s, vh = np.linalg.svd(matrix, full_matrices=False)
        residual, neurons = (u, vh.T) if kind == "mlp_in" else (vh.T, u)
        for sv in (0, 3, 40):
            judge = residual[:, sv] @ W_Uc
            sign = np.sign(judge[np.abs(judge).argmax()])
            partner = neurons[:, sv] * sign
            rows = a.sql(
                "SELECT n.rank, n.neuron, n.weight FROM top_neurons n JOIN directions d "
                "USING (direction_id) WHERE d.kind = ? AND d.layer = ? AND d.sv_index = ? "
                "ORDER BY n.rank",
                [kind, layer, sv],
            ).to_pydict()
            k = len(rows["rank"])
            expected = np.argsort(-np.abs(partner), kind="stable")[:k]
            assert rows["neuron"] == expected.tolist(), (kind, layer, sv)
            # a float32 SVD turns a vector by about eps * sigma_max / gap (Davis–Kahan)
            gap = min(abs(s[sv] - s[j]) for j in (sv - 1, sv + 1) if 0 <= j < len(s)) / s[0]
            np.testing.assert_allclose(rows["weight"], partner[expected], atol=1e-6 + 2e-6 / gap)


def test_layer_norms_view_equals_plain_sql(a: atlas.Atlas) -> None:
    view = a.sql("SELECT * FROM layer_norms ORDER BY model_id, kind, layer").to_pylist()
    plain = a.sql(
        "SELECT model_id, kind, layer, max(sigma_max) AS sigma_max, "
        "sqrt(sum(frobenius_norm ^ 2)) AS frobenius_norm, count(*) AS n_matrices "
        "FROM matrices GROUP BY ALL ORDER BY model_id, kind, layer"
    ).to_pylist()
    assert [(r["kind"], r["layer"], r["n_matrices"]) for r in view] == [
        (r["kind"], r["layer"], r["n_matrices"]) for r in plain
    ]
    np.testing.assert_allclose([r["sigma_max"] for r in view], [r["sigma_max"] for r in plain])
    np.testing.assert_allclose(
        [r["frobenius_norm"] for r in view], [r["frobenius_norm"] for r in plain]
    )
    # and against numpy on the raw checkpoint for one layer
    ov = [oracle.ov_matrix(2, h) for h in range(oracle.N_HEADS)]
    row = next(r for r in view if r["kind"] == "ov" and r["layer"] == 2)
    assert row["sigma_max"] == pytest.approx(max(np.linalg.norm(m, 2) for m in ov), rel=1e-5)
    assert row["frobenius_norm"] == pytest.approx(
        np.sqrt(sum(np.linalg.norm(m) ** 2 for m in ov)), rel=1e-5
    )


def test_head_summary_view_equals_plain_sql(a: atlas.Atlas) -> None:
    view = a.sql("SELECT * FROM head_summary ORDER BY layer, head").to_pylist()
    assert len(view) == oracle.N_LAYERS * oracle.N_HEADS
    plain = a.sql(
        "SELECT m.layer, m.head, m.sigma_max, m.stable_rank, d.direction_id AS top_write_id, "
        "list(t.token_display ORDER BY t.rank) AS tokens FROM matrices m "
        "JOIN directions d ON d.matrix_id = m.matrix_id AND d.sv_index = 0 AND d.side = 'write' "
        "JOIN top_tokens t ON t.direction_id = d.direction_id AND t.polarity = 'pos' "
        "WHERE m.kind = 'ov' GROUP BY ALL ORDER BY m.layer, m.head"
    ).to_pylist()
    for v, p in zip(view, plain, strict=True):
        assert (v["layer"], v["head"], v["top_write_id"]) == (
            p["layer"],
            p["head"],
            p["top_write_id"],
        )
        assert v["top_write_tokens"] == p["tokens"]
        assert v["sigma_max"] == p["sigma_max"] and v["stable_rank"] == p["stable_rank"]
    # stable rank from numpy on one head: ‖M‖_F² / σ_max²
    m = oracle.ov_matrix(3, 3)
    expected = np.linalg.norm(m) ** 2 / np.linalg.norm(m, 2) ** 2
    row = next(r for r in view if (r["layer"], r["head"]) == (3, 3))
    assert row["stable_rank"] == pytest.approx(expected, rel=1e-5)
