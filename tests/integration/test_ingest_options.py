"""Weight processing, rank truncation and skipped MLPs, through the Python API."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import atlas
from ingest.job import IngestOptions, ingest
from ingest.weights import extract_weights
from tests.support.helpers import quiet


@pytest.mark.slow
def test_tl_processing_records_what_was_applied(tmp_path: Path, minilm_atlas: Path) -> None:
    root = tmp_path / "atlas"
    ingest(
        root,
        IngestOptions(
            model="minilm", model_id="minilm-tl", processing="tl", max_rank=4, device="cpu"
        ),
        log=quiet,
    )
    with atlas.open(root) as a:
        row = a.sql(
            "SELECT processing, processing_applied, max_rank, versions, "
            "stage_seconds, device FROM models"
        ).to_pylist()[0]
        ranks = a.sql("SELECT DISTINCT rank FROM matrices").to_pylist()
        n = a.sql("SELECT count(*) AS n FROM directions").to_pylist()[0]["n"]
        tl_sigma = a.sql(
            "SELECT sigma FROM directions WHERE kind = 'ov' AND layer = 0 AND "
            "head = 0 AND side = 'write' ORDER BY sv_index"
        ).to_pydict()["sigma"]
    assert row["processing"] == "tl"
    # BERT has post-LayerNorm blocks: TransformerLens cannot fold its LayerNorms
    assert row["processing_applied"] == (
        '["center_writing_weights", "center_unembed", "fold_value_biases"]'
    )
    assert row["max_rank"] == 4 and ranks == [{"rank": 4}]
    assert n == 4 * (72 * 2 * 2 + 12)  # OV and QK heads: 2 sides
    assert set(json.loads(row["stage_seconds"])) == {
        "boot",
        "load",
        "decompose",
        "project",
        "compose",
        "write",
        "wall",
    }
    assert '"torch"' in row["versions"] and row["device"] == "cpu"
    with atlas.open(minilm_atlas) as a:
        raw_sigma = a.sql(
            "SELECT sigma FROM directions WHERE kind = 'ov' AND layer = 0 AND "
            "head = 0 AND side = 'write' AND sv_index < 4 ORDER BY sv_index"
        ).to_pydict()["sigma"]
    # centering the writing weights changes W_O, so the spectrum moves (but not by much)
    assert not np.allclose(tl_sigma, raw_sigma, rtol=1e-6)
    np.testing.assert_allclose(tl_sigma, raw_sigma, rtol=0.2)


def test_mixture_of_experts_mlps_are_skipped_with_a_message() -> None:
    n_layers, n_heads, d_model, d_head = 2, 2, 8, 4
    bridge = SimpleNamespace(
        cfg=SimpleNamespace(n_heads=n_heads, n_layers=n_layers, num_experts=4),
        W_Q=torch.randn(n_layers, n_heads, d_model, d_head),
        W_K=torch.randn(n_layers, n_heads, d_model, d_head),
        W_V=torch.randn(n_layers, n_heads, d_model, d_head),
        W_O=torch.randn(n_layers, n_heads, d_head, d_model),
        W_U=torch.randn(d_model, 10),
        W_E=torch.randn(10, d_model),
    )
    weights = extract_weights(bridge, "cpu")
    assert weights.mlp == {}
    assert weights.skipped == ["every layer's MLP: mixture-of-experts MLPs are not decomposed"]


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for machines without it")
    with pytest.raises(atlas.AtlasError, match="no CUDA device"):
        ingest(tmp_path / "a", IngestOptions(model="minilm", device="cuda"), log=quiet)
