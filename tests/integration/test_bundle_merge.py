"""Two atlases built separately, with colliding ids, merge into one by loading both bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import atlas
from tests.support.atlas_compare import neighbours, query_set, table
from tests.support.helpers import quiet, run_cli

# slow: ingests two MiniLM atlases to merge
pytestmark = pytest.mark.slow

KEY = "model_id, kind, layer, head, sv_index, side"


@pytest.fixture(scope="module")
def llama_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second atlas, built on its own: its ids start at 0 like MiniLM's."""
    from ingest.job import IngestOptions, ingest

    root = tmp_path_factory.mktemp("llama") / "atlas"
    options = IngestOptions(model="random:llama-tiny", device="cpu", max_rank=4)
    ingest(root, options, log=quiet)
    return root


def test_merge_two_atlases(minilm_atlas: Path, llama_atlas: Path, tmp_path: Path) -> None:
    for source, name in ((minilm_atlas, "a.bundle"), (llama_atlas, "b.bundle")):
        result = run_cli("--atlas", source, "export", "-o", tmp_path / name)
        assert result.returncode == 0, result.stderr
    merged = tmp_path / "merged"
    first = run_cli("--atlas", merged, "load", tmp_path / "a.bundle")
    second = run_cli("--atlas", merged, "load", tmp_path / "b.bundle")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "remapped" not in first.stdout
    assert "remapped from 0" in second.stdout  # both atlases started their ids at 0

    with (
        atlas.open(merged) as m,
        atlas.open(minilm_atlas) as a,
        atlas.open(llama_atlas) as b,
    ):
        assert sorted(m.model_ids()) == ["minilm", "random:llama-tiny"]
        # ids are unique across the merged atlas, MiniLM's are unchanged
        ids = m.sql("SELECT direction_id FROM directions")["direction_id"].to_numpy()
        assert len(np.unique(ids)) == len(ids) == 13824 + b.sql("SELECT * FROM directions").num_rows
        offset = 13824
        assert table(m, "directions", "WHERE model_id = 'minilm'").equals(table(a, "directions"))

        # SQL spans both: every row of each source, joined through the remapped ids
        tokens = f"""
            SELECT {KEY}, t.polarity, t.rank, t.token, t.score, d.sigma
            FROM directions d JOIN top_tokens t USING (direction_id)
            ORDER BY {KEY}, t.polarity, t.rank
        """
        both = m.sql(tokens)
        assert both.num_rows == a.sql(tokens).num_rows + b.sql(tokens).num_rows
        llama_rows = m.sql(f"SELECT * FROM ({tokens}) WHERE model_id = 'random:llama-tiny'")
        assert llama_rows.equals(b.sql(tokens))
        kinds = m.sql("SELECT DISTINCT model_id, kind FROM directions ORDER BY ALL").to_pylist()
        assert {"model_id": "random:llama-tiny", "kind": "mlp_gate"} in kinds
        assert {"model_id": "minilm", "kind": "ov"} in kinds

        # search spans both: each model's neighbours are the originals (llama's shifted)
        for model_id, source, shift in (("minilm", a, 0), ("random:llama-tiny", b, offset)):
            queries = query_set(source, model_id, n=100)
            found = neighbours(m, model_id, queries)
            np.testing.assert_array_equal(found, neighbours(source, model_id, queries) + shift)
