"""svd-atlas benchmarks: every figure is measured side by side with its baseline in one run.

    python bench/run.py [--only ingest,decompose] [--device cpu|cuda] [--large]

Writes bench/results/latest.json and BENCHMARKS.md (machine details included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
INGEST_STAGES = ("boot", "decompose", "project", "score", "write", "index")


def machine() -> dict[str, Any]:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    return info


def ingest_subprocess(model: str, device: str) -> dict[str, Any]:
    """End-to-end ingest in a fresh process (imports included), with its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "ingest_report.py"),
                f"{tmp}/atlas",
                model,
                device,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        )
        wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "model": model,
        "device": device,
        "wall_seconds": round(wall, 2),
        "import_seconds": report["import_seconds"],
        "stage_seconds": report["stage_seconds"],
        "peak_rss_mb_after_stage": {k: round(v) for k, v in report["peak_rss_mb"].items()},
        "peak_gpu_mb_by_stage": {k: round(v) for k, v in report["peak_gpu_mb"].items()},
        "peak_rss_mb": round(max(peak, before) / 1024),
        "size_mb": round(report["size_bytes"] / 2**20, 1),
        "directions": report["counts"]["directions"],
    }


def bench_ingest(device: str, large: bool) -> list[dict[str, Any]]:
    models = ["minilm", "random:gpt2-small"] + (["random:gpt2-medium"] if large else [])
    return [ingest_subprocess(m, device) for m in models]


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_ov_decomposition(W_V: Any, W_O: Any, device: str) -> tuple[float, float]:
    """Seconds for the batched factored SVD and for a per-head full SVD of explicit OV."""
    import torch

    from atlas.svd import factored_svd

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def batched() -> None:
        factored_svd(W_V, W_O)
        sync()

    def per_head() -> None:  # what the sprint notebook and SVDInterpreter do
        for h in range(W_V.shape[0]):
            torch.linalg.svd(W_V[h] @ W_O[h])
        sync()

    batched()  # warm-up
    return _best_of(batched, 3), _best_of(per_head, 1)


def bench_decompose(device: str, large: bool) -> list[dict[str, Any]]:
    """Batched QR-factored OV SVD against a per-head full SVD of the explicit OV matrix."""
    import torch

    from ingest.random_models import RANDOM_SHAPES

    out = []
    for shape in ["gpt2-small"] + (["gpt2-medium"] if large else []):
        s = RANDOM_SHAPES[shape]
        gen = torch.Generator().manual_seed(0)
        n = s["n_layers"] * s["n_heads"]
        W_V = (torch.randn(n, s["d_model"], s["d_head"], generator=gen) * 0.02).to(device)
        W_O = (torch.randn(n, s["d_head"], s["d_model"], generator=gen) * 0.02).to(device)
        t_batched, t_naive = time_ov_decomposition(W_V, W_O, device)
        out.append(
            {
                "shape": shape,
                "heads": n,
                "device": device,
                "batched_factored_seconds": round(t_batched, 4),
                "per_head_full_seconds": round(t_naive, 3),
                "speedup": round(t_naive / t_batched, 1),
            }
        )
    return out


SECTIONS: dict[str, Callable[[str, bool], list[dict[str, Any]]]] = {
    "decompose": bench_decompose,
    "ingest": bench_ingest,
}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {results['date']} with `python bench/run.py "
        f"{' '.join(results['argv'])}`".rstrip()
        + "`.",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), GPU: {m['gpu'] or 'none'}.",
        "",
    ]
    if "decompose" in results:
        lines += [
            "## Decomposition: batched factored OV SVD vs per-head full SVD",
            "",
            "| shape | heads | device | batched factored (s) | per-head full (s) | speedup |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['shape']} | {r['heads']} | {r['device']} | "
            f"{r['batched_factored_seconds']} | {r['per_head_full_seconds']} | "
            f"{r['speedup']}x |"
            for r in results["decompose"]
        ]
        lines.append("")
    if "ingest" in results:
        lines += [
            "## Ingest end to end (fresh process, imports included)",
            "",
            "| model | device | wall (s) | import | boot | decompose | project | score | write | "
            "index | peak RSS (MB) | on disk (MB) | directions |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["ingest"]:
            st = r["stage_seconds"]
            lines.append(
                f"| {r['model']} | {r['device']} | {r['wall_seconds']} | {r['import_seconds']} | "
                + " | ".join(str(st.get(k, "")) for k in INGEST_STAGES)
                + f" | {r['peak_rss_mb']} | {r['size_mb']} | {r['directions']:,} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--large", action="store_true", help="add gpt2-medium shapes")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "argv": sys.argv[1:],
        "machine": machine(),
    }
    for name in args.only.split(","):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = SECTIONS[name](args.device, args.large)
        print(json.dumps(results[name], indent=1), file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    (ROOT / "BENCHMARKS.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
