"""Scale-out benchmarks: a job of many models serially and on Ray, and search across 1 to 100
models (residual space streamed through one index at a time, token space, and every index kept
loaded), each measured side by side in fresh processes (imports and start-up included).

    python bench/run.py --only jobs,zoo

Sections of ``bench/run.py``; results land in bench/results/latest.json and BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.timing import timed_process

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from atlas.cli import main; main()"]
JOB_MODELS = 4  # a job of four identical random:llama-tiny models (the same work each)
ZOO_SIZES = (1, 10, 100)
ZOO_SHAPE = "random:llama-tiny"  # 5,120 directions of width 256: a 5.2 MB index per model


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _timed(command: list[str]) -> tuple[str, float, float]:
    return timed_process(command, _env())


def _job_file(folder: Path, n: int, prefix: str) -> Path:
    path = folder / f"{prefix}.txt"
    path.write_text("".join(f"{ZOO_SHAPE} --name {prefix}-{i:03d}\n" for i in range(n)))
    return path


def _per_model_seconds(stdout: str) -> list[float]:
    """The seconds column of the job summary's table (``model_id status directions seconds``)."""
    rows = [line.split() for line in stdout.splitlines() if " published " in f" {line} "]
    return [float(r[3]) for r in rows]


def bench_jobs(device: str, large: bool) -> list[dict[str, Any]]:
    """The same job of JOB_MODELS models run serially and on a local Ray cluster (started by
    the command, as --ray without an address does), best of 2 each after one warm-up run of
    each; and what N GPUs would give, computed from the per-model times."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        job = _job_file(folder, JOB_MODELS, "tiny")
        runs: dict[str, list[tuple[float, float, list[float]]]] = {"serial": [], "ray": []}
        for attempt in range(3):
            for name, extra in (("serial", []), ("ray", ["--ray"])):
                atlas = folder / f"{name}-{attempt}"
                out, wall, peak = _timed(
                    [*CLI, "--atlas", str(atlas), "ingest", "--from", str(job),
                     "--device", device, *extra]
                )  # fmt: skip
                if attempt:  # the first of each is the warm-up
                    runs[name].append((wall, peak, _per_model_seconds(out)))
                print(json.dumps({"job": name, "wall": wall}), file=sys.stderr, flush=True)
        ray_start = _ray_start_seconds()
    serial = min(runs["serial"])
    ray = min(runs["ray"])
    per_model = sum(serial[2]) / len(serial[2])
    return [
        {
            "models": JOB_MODELS,
            "model": ZOO_SHAPE,
            "device": device,
            "cpus": os.cpu_count(),
            "serial_seconds": round(serial[0], 1),
            "ray_seconds": round(ray[0], 1),
            "speedup": round(serial[0] / ray[0], 2),
            "per_model_seconds": round(per_model, 2),
            "ray_start_seconds": round(ray_start, 1),
            "serial_peak_rss_mb": round(serial[1]),
            "ray_driver_peak_rss_mb": round(ray[1]),
            # N models of this shape on G workers, each as fast as one ingest alone here:
            # Ray's start-up, then ceil(N/G) models one after another on each worker
            "computed": {
                f"{n} models on {g} workers": round(ray_start + -(-n // g) * per_model, 1)
                for n in (100, 1232)
                for g in (1, 8, 64)
            },
        }
    ]


def _ray_start_seconds() -> float:
    """How long starting and stopping a local Ray cluster takes here (best of 2)."""
    code = "import ray; ray.init(include_dashboard=False, logging_level=40); ray.shutdown()"
    return min(_timed([sys.executable, "-c", code])[1] for _ in range(2))


ZOO_SEARCH = r"""
import json, resource, sys, time
start = time.perf_counter()
import atlas
location, n, space, keep = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "keep"
with atlas.open(location) as a:
    models = a.model_ids()[:n]
    opened = time.perf_counter()
    if keep:
        a.load_indexes(64 << 30)
    loaded = time.perf_counter()
    hits = a.search("fire", model=models, space=space, k=10)
    searched = time.perf_counter()
    again = a.search("water", model=models, space=space, k=10)
    print(json.dumps({
        "open_s": opened - start, "load_s": loaded - opened, "first_search_s": searched - loaded,
        "second_search_s": time.perf_counter() - searched, "hits": len(hits) + len(again),
        "indexes_held": len(a.loaded_indexes())}))
"""


def bench_zoo(device: str, large: bool) -> list[dict[str, Any]]:
    """Search across 1, 10 and 100 models of one atlas (a job of 100 random models ingested
    first): residual space streamed model by model (one index held at a time), the same with
    every index loaded first (what a server does), and token space; wall time, the two
    searches' times, and peak RSS of each process."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        zoo = folder / "zoo"
        job = _job_file(folder, max(ZOO_SIZES), "zoo")
        start = time.perf_counter()
        _timed([*CLI, "--atlas", str(zoo), "ingest", "--from", str(job), "--device", device])
        built = time.perf_counter() - start
        for n in ZOO_SIZES:
            for space, keep in (("residual", False), ("residual", True), ("token", False)):
                stdout, wall, peak = _timed(
                    [sys.executable, "-c", ZOO_SEARCH, str(zoo), str(n), space,
                     "keep" if keep else "stream"]
                )  # fmt: skip
                row = json.loads(stdout.strip().splitlines()[-1])
                out.append(
                    {
                        "models": n,
                        "space": space,
                        "indexes": "all loaded" if keep else "streamed",
                        "wall_seconds": round(wall, 2),
                        "load_seconds": round(row["load_s"], 2),
                        "first_search_ms": round(row["first_search_s"] * 1e3, 1),
                        "second_search_ms": round(row["second_search_s"] * 1e3, 1),
                        "indexes_held": row["indexes_held"],
                        "peak_rss_mb": round(peak),
                        "zoo_ingest_seconds": round(built, 1),
                    }
                )
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out
