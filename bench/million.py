"""The 1e6-direction atlas the search benchmarks share (``search_path``, ``serve_load``), and
its 1e5 and 1e7 siblings for the search breakdown by size.

A real ingest of a random GPT-2-style model (``atlas.models.random_models``): width 128, 2 heads
of 64, 1,302 layers, a vocabulary of 8,192, so 768 directions a layer (OV and QK read and
write sides, MLP in and out) and 999,936 in all, with an approximate index. This is the
cheapest shape found to reach 1e6 directions on 2 shared cores: projecting every direction
through the unembedding costs directions x d_model x d_vocab, so narrow and with a small
vocabulary (width 256 and 30,522 tokens would take about 90 minutes). The composition stage
is left out (switched off in this process: ingest has no option for it), as it scores every
ordered pair of heads, hours at 1,302 layers, and search reads none of its tables. Built
once into data/bench/ and reused.

    python bench/million.py             # build it now
    python bench/million.py --tier 1e5  # 130 layers, 99,840 directions (about 20 s)
    python bench/million.py --tier 1e7  # 13,021 layers, 10,000,128 directions (about 35 min, 19 GB)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "bench"
TIERS = {"1e5": 130, "1e6": 1302, "1e7": 13021}  # layers: 768 directions each
SHAPE = {"n_embd": 128, "n_head": 2, "vocab_size": 8192, "n_positions": 1024}


def million_atlas() -> Path:
    """The 1e6 atlas folder, built on first use."""
    return tier_atlas("1e6")


def tier_atlas(tier: str) -> Path:
    """The atlas folder of a tier (``TIERS``), built on first use."""
    layers = TIERS[tier]
    atlas_dir = DATA / f"atlas-{tier}"
    if (atlas_dir / "catalog.json").exists():
        return atlas_dir
    from transformers import GPT2Config

    import atlas
    from atlas.models.random_models import RANDOM_SHAPES, gpt2_fields, save_random_model
    from ingest.composition import CompositionStage

    folder = DATA / f"model-{tier}"
    if not (folder / "config.json").exists():
        fields = {**RANDOM_SHAPES["gpt2-small"][1], **SHAPE, "n_layer": layers}
        config = GPT2Config(**gpt2_fields(fields))
        config.architectures = ["GPT2LMHeadModel"]
        print(f"saving a {layers}-layer random model to {folder} ...", file=sys.stderr)
        save_random_model("gpt2-small", folder, shards=max(1, layers // 14), config=config)
    CompositionStage.add_block = lambda self, groups, bases: (None, None)  # type: ignore[method-assign]
    start = time.perf_counter()
    print("ingesting it ...", file=sys.stderr)
    atlas.ingest(atlas_dir, (str(folder), f"synthetic-{tier}"), top_k=10, log=print)
    print(f"built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return atlas_dir


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build a search benchmark atlas.")
    parser.add_argument("--tier", choices=sorted(TIERS), default="1e6")
    print(tier_atlas(parser.parse_args().tier))
