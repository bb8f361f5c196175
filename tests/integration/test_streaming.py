"""Streaming ingest (one block at a time) stores exactly what a whole-model ingest stores.

The whole-model path is the model booted whole as one TransformerBridge and ingested from it
(``ingest(..., loaded=load_model(...))``, what earlier versions always did). Compared: every
table row (ids included), the top tokens and the signs, vectors to 1e-5, and search results;
on the bundled MiniLM, on a saved ``random:llama-tiny`` folder and on a ``random:gpt2-tiny``
folder saved in two safetensors shards (the sharding logic needs GPT-2's layout, not its size).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import atlas
from atlas.models.loading import load_model
from atlas.models.random_models import save_random_model
from ingest.job import IngestOptions, ingest
from tests.support.atlas_compare import assert_same_atlas
from tests.support.helpers import quiet

# slow: streamed ingests of saved, sharded and half-precision folders against whole-model ones
pytestmark = pytest.mark.slow


def _both(root: Path, spec: str, **options: object) -> tuple[Path, Path]:
    """The model ingested streamed (into ``root/streamed``) and whole (``root/whole``)."""
    streamed, whole = root / "streamed", root / "whole"
    ingest(streamed, IngestOptions(model=spec, device="cpu", **options), log=quiet)
    loaded = load_model(spec, "cpu", processing=str(options.get("processing", "raw")))
    ingest(
        whole,
        IngestOptions(model=spec, device="cpu", **options),
        loaded=loaded,
        log=quiet,
    )
    return streamed, whole


def test_minilm_streamed_equals_whole_model(tmp_path: Path) -> None:
    assert_same_atlas(*_both(tmp_path, "minilm", max_rank=8))


def test_saved_llama_tiny_folder_streamed_equals_whole_model(tmp_path: Path) -> None:
    folder = save_random_model("llama-tiny", tmp_path / "llama-tiny")
    assert_same_atlas(*_both(tmp_path, str(folder), processing="tl", max_rank=8))
    # the folder holds the weights random:llama-tiny streams itself
    spec = tmp_path / "from-spec"
    ingest(spec, IngestOptions(model="random:llama-tiny", device="cpu", processing="tl",
                               max_rank=8), log=quiet)  # fmt: skip
    with atlas.open(spec) as a, atlas.open(tmp_path / "streamed") as b:
        va = a.sql("SELECT vector FROM directions ORDER BY direction_id")["vector"].to_pylist()
        vb = b.sql("SELECT vector FROM directions ORDER BY direction_id")["vector"].to_pylist()
        np.testing.assert_array_equal(np.array(va), np.array(vb))


def test_two_shard_gpt2_folder_streamed_equals_whole_model(tmp_path: Path) -> None:
    folder = save_random_model("gpt2-tiny", tmp_path / "gpt2-tiny", shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert (
        len(set(index["weight_map"].values())) == 2 and len(list(folder.glob("*.safetensors"))) == 2
    )
    assert_same_atlas(*_both(tmp_path, str(folder), max_rank=4))


def test_half_precision_checkpoints_are_read_as_stored(tmp_path: Path) -> None:
    """A bfloat16 checkpoint streams one block at a time and decomposes in float32: the stored
    spectra equal numpy's SVD of the bfloat16 values widened to float64."""
    import torch

    folder = save_random_model("llama-tiny", tmp_path / "bf16")
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()},
              folder / "model.safetensors")  # fmt: skip
    stored = load_file(str(folder / "model.safetensors"))
    assert stored["model.layers.1.mlp.down_proj.weight"].dtype == torch.bfloat16
    root = tmp_path / "atlas"
    ingest(root, IngestOptions(model=str(folder), device="cpu", max_rank=4), log=quiet)
    with atlas.open(root) as a:
        spectrum = a.sql("SELECT spectrum FROM matrices WHERE kind = 'mlp_out' AND layer = 1")[
            "spectrum"
        ][0].as_py()
        dtype = a.sql("SELECT weight_dtype FROM models")["weight_dtype"][0].as_py()
    down = stored["model.layers.1.mlp.down_proj.weight"].double().numpy().T  # [d_mlp, d_model]
    np.testing.assert_allclose(spectrum, np.linalg.svd(down, compute_uv=False), rtol=1e-5)
    assert dtype == "float32"


@pytest.mark.parametrize("processing", ["raw", "tl"])
def test_streamed_blocks_equal_the_whole_bridge(tmp_path: Path, processing: str) -> None:
    """Block by block, the matrices TransformerLens gives a one-block model are the whole
    model's, processing included (W_U too)."""
    from atlas.models.loading import resolve_spec
    from ingest.blocks import open_blocks
    from ingest.weights import extract_weights

    folder = save_random_model("gpt2-tiny", tmp_path / "g", shards=2)
    blocks = open_blocks(resolve_spec(str(folder)), processing=processing)
    whole = extract_weights(load_model(str(folder), processing=processing).bridge, "cpu")
    assert blocks.n_blocks == 3
    for i in range(3):
        block = blocks.block(i)
        assert block.W_V[0].equal(whole.W_V[i]) and block.W_O[0].equal(whole.W_O[i])
        for kind, matrices in whole.mlp.items():
            assert block.mlp[kind][0].equal(matrices[i]), kind
    assert blocks.unembedding().equal(whole.W_U)
    assert blocks.embedding().equal(whole.W_E)
