"""Run one ingest in this (fresh) process and print its report as JSON (used by bench/run.py)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

start = time.perf_counter()
from ingest.job import IngestOptions, ingest  # noqa: E402

imported = time.perf_counter() - start
report = ingest(
    sys.argv[1],
    IngestOptions(model=sys.argv[2], device=sys.argv[3]),
    log=lambda _m: None,
    progress=False,
)
out = dataclasses.asdict(report)
out["import_seconds"] = round(imported, 3)
out["total_seconds"] = round(time.perf_counter() - start, 3)
store = next(Path(sys.argv[1], "store").iterdir())
out["db_bytes"] = (store / "model.duckdb").stat().st_size
print(json.dumps(out))
