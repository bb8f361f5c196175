"""The 1e6-direction atlas the search benchmarks share (``search_path``, ``serve_load``).

A real ingest of a random GPT-2-style model (``atlas.models.random_models``): width 128, 2 heads
of 64, 1,302 layers, a vocabulary of 8,192, so 768 directions a layer (OV and QK read and
write sides, MLP in and out) and 999,936 in all, with an approximate index. This is the
cheapest shape found to reach 1e6 directions on 2 shared cores: projecting every direction
through the unembedding costs directions x d_model x d_vocab, so narrow and with a small
vocabulary (width 256 and 30,522 tokens would take about 90 minutes). The composition stage
is left out (switched off in this process: ingest has no option for it), as it scores every
ordered pair of heads, hours at 1,302 layers, and search reads none of its tables. Built
once into data/bench/ and reused.

    python bench/million.py     # build it now
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "bench"
LAYERS = 1302
SHAPE = {"n_embd": 128, "n_head": 2, "n_layer": LAYERS, "vocab_size": 8192, "n_positions": 1024}
MODEL_ID = "synthetic-1e6"


def million_atlas() -> Path:
    """The atlas folder, built on first use."""
    atlas_dir = DATA / "atlas-1e6"
    if (atlas_dir / "catalog.json").exists():
        return atlas_dir
    from transformers import GPT2Config

    import atlas
    from atlas.models.random_models import RANDOM_SHAPES, save_random_model
    from ingest.composition import CompositionStage

    folder = DATA / "model-1e6"
    if not (folder / "config.json").exists():
        config = GPT2Config(**{**RANDOM_SHAPES["gpt2-small"][1], **SHAPE})
        config.architectures = ["GPT2LMHeadModel"]
        print(f"saving a {LAYERS}-layer random model to {folder} ...", file=sys.stderr)
        save_random_model("gpt2-small", folder, shards=LAYERS // 14, config=config)
    CompositionStage.add_block = lambda self, groups, bases: (None, None)  # type: ignore[method-assign]
    start = time.perf_counter()
    print("ingesting it ...", file=sys.stderr)
    atlas.ingest(atlas_dir, (str(folder), MODEL_ID), top_k=10, log=print)
    print(f"built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return atlas_dir


if __name__ == "__main__":
    print(million_atlas())
