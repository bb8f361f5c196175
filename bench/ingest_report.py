"""One ingest in this (fresh) process, its report printed as JSON (used by bench/run.py).

    python bench/ingest_report.py ATLAS MODEL DEVICE [--whole] [--max-rank N]

``--whole`` boots the whole model first and ingests it from memory (the path every ingest took
before streaming); otherwise the model streams one block at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

start = time.perf_counter()
from atlas.models.loading import load_model, resolve_spec  # noqa: E402
from ingest.job import IngestOptions, ingest  # noqa: E402

imported = time.perf_counter() - start


def parameters(spec: str) -> int:
    """The model's parameter count, from its configuration (counted on the meta device)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel

    resolved = resolve_spec(spec)
    if resolved.shape is not None:
        from atlas.models.random_models import random_config

        config = random_config(resolved.shape)
    else:
        config = AutoConfig.from_pretrained(resolved.folder)
    with init_empty_weights():
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


parser = argparse.ArgumentParser()
parser.add_argument("atlas")
parser.add_argument("model")
parser.add_argument("device")
parser.add_argument("--whole", action="store_true")
parser.add_argument("--max-rank", type=int)
args = parser.parse_args()
options = IngestOptions(model=args.model, device=args.device, max_rank=args.max_rank)
loaded = load_model(args.model, args.device) if args.whole else None
report = ingest(args.atlas, options, loaded=loaded, log=lambda _m: None)
out = dataclasses.asdict(report)
out["import_seconds"] = round(imported, 3)
out["parameters"] = parameters(args.model)
print(json.dumps(out))
