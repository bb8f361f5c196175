"""Factored (QR) and full (explicit d_model x d_model) OV SVDs store the same rows, signs
included, on a random-weight grouped-query model with a gated MLP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import atlas
from atlas.models.loading import load_model
from ingest.decompose import ov_factored, ov_full
from ingest.job import IngestOptions, ingest
from tests.support.helpers import quiet

# slow: ingests llama-tiny twice, once with explicit d_model^2 products
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_atlases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    loaded = load_model("random:llama-tiny", "cpu")
    roots = []
    for method in (ov_factored, ov_full):
        root = tmp_path_factory.mktemp(method.__name__) / "atlas"
        ingest(
            root,
            # every OV and QK direction (d_head is 32); the MLPs are not what differs
            IngestOptions(model="random:llama-tiny", device="cpu", max_rank=32),
            loaded=loaded,
            ov_method=method,
            log=quiet,
        )
        roots.append(root)
    return roots[0], roots[1]


def _rows(root: Path, query: str) -> dict[str, list]:
    with atlas.open(root) as a:
        return a.sql(query).to_pydict()


def test_direction_rows_identical(two_atlases: tuple[Path, Path]) -> None:
    query = (
        "SELECT direction_id, kind, layer, head, sv_index, side, sigma, degenerate, vector "
        "FROM directions ORDER BY direction_id"
    )
    a, b = (_rows(r, query) for r in two_atlases)
    for column in ("direction_id", "kind", "layer", "head", "sv_index", "side", "degenerate"):
        assert a[column] == b[column], column
    np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=1e-4)
    va, vb = np.array(a["vector"]), np.array(b["vector"])
    ok = ~np.array(a["degenerate"])
    assert ok.mean() > 0.9
    # float32 round-off on well-separated directions: 3e-5 measured, 1e-4 allowed
    np.testing.assert_allclose(va[ok], vb[ok], atol=1e-4)
    # signs, not just spans: the same sign on every well-separated direction
    assert (np.sign((va[ok] * vb[ok]).sum(axis=1)) > 0).all()


def test_top_tokens_identical(two_atlases: tuple[Path, Path]) -> None:
    query = """SELECT t.direction_id, polarity, t.rank, token_id, score FROM top_tokens t
               JOIN directions d USING (direction_id)
               WHERE NOT d.degenerate AND t.rank < 5 AND t.basis = 'unembed'
               ORDER BY t.direction_id, polarity, t.rank"""
    a, b = (_rows(r, query) for r in two_atlases)
    assert a["direction_id"] == b["direction_id"]
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-3)
    same = np.mean(np.array(a["token_id"]) == np.array(b["token_id"]))
    assert same > 0.99  # the rest are near-ties in score


def test_grouped_query_heads_share_their_value_space(two_atlases: tuple[Path, Path]) -> None:
    """llama-tiny has 8 query heads over 2 kv heads: heads 0-3 read through one W_V."""
    rows = _rows(
        two_atlases[0],
        """
        SELECT head, list(vector ORDER BY sv_index) AS vecs FROM directions
        WHERE kind = 'ov' AND layer = 0 AND side = 'read' GROUP BY head ORDER BY head""",
    )
    spans = [np.array(v) for v in rows["vecs"]]
    proj = [s.T @ s for s in spans]  # projector onto each head's read space
    assert np.abs(proj[0] - proj[3]).max() < 1e-3  # same kv group: same read space
    assert np.abs(proj[0] - proj[4]).max() > 0.1  # other kv group


def test_gated_mlp_decomposed(two_atlases: tuple[Path, Path]) -> None:
    rows = _rows(
        two_atlases[0],
        "SELECT kind, count(*) AS n, any_value(n_rows) AS r, "
        "any_value(n_cols) AS c FROM matrices GROUP BY kind ORDER BY kind",
    )
    assert dict(zip(rows["kind"], rows["n"], strict=True)) == {
        "mlp_gate": 4,
        "mlp_in": 4,
        "mlp_out": 4,
        "ov": 32,
        "qk": 32,
    }
