"""Weights whose SVD means nothing are refused in one line, before anything is published: an
infinite value (its SVD was stored as garbage: sigma inf and NaN, basis vectors for
directions) or a NaN (LAPACK failed with a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from atlas.models.random_models import save_random_model
from tests.support.helpers import assert_one_error_line, run_cli

# random:gpt2-tiny: width 64, 4 heads of 16, 3 layers, an MLP of 256
DAMAGE = {
    "inf": ("transformer.h.2.mlp.c_fc.weight", float("inf"), "layer 2's W_in"),
    "nan": ("transformer.h.1.attn.c_attn.weight", float("nan"), "layer 1's W_Q"),
    "inf unembedding": ("transformer.wte.weight", float("-inf"), "the model's W_U"),
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[pytest.mark.slow] if c != "inf" else []) for c in DAMAGE]
)
def test_non_finite_weights_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    name, value, words = DAMAGE[case]
    folder = save_random_model("gpt2-tiny", tmp_path / "model")
    tensors = load_file(folder / "model.safetensors")
    tensors[name][0, 0] = value  # W_U is tied to the embedding: one token's row, all of it
    if case == "inf unembedding":
        tensors[name][0, :] = value
    save_file(tensors, folder / "model.safetensors")
    root = tmp_path / "atlas"
    line = assert_one_error_line(run_cli("--atlas", root, "ingest", folder))
    assert f"{words} holds non-finite values (inf or NaN)" in line, line
    assert "not ingested" in line
    if root.exists():  # the atlas the ingest created holds nothing
        assert "holds no models yet" in run_cli("--atlas", root, "models").stdout
