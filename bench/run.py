"""svd-atlas benchmarks: every figure is measured side by side with its baseline in one run.

    python bench/run.py [--only ingest,decompose] [--device cpu|cuda] [--large]

Writes bench/results/latest.json and BENCHMARKS.md (machine details included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/run.py` from anywhere: bench.* is importable
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
    """End-to-end ingest in a fresh process (imports included), with its peak RSS (the largest
    of the per-stage peaks: the ingest resets the kernel's high-water mark at each stage)."""
    with tempfile.TemporaryDirectory() as tmp:
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
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "model": model,
        "device": device,
        "wall_seconds": round(wall, 2),
        "import_seconds": report["import_seconds"],
        "stage_seconds": report["stage_seconds"],
        "peak_rss_mb_by_stage": {k: round(v) for k, v in report["peak_rss_mb"].items()},
        "peak_gpu_mb_by_stage": {k: round(v) for k, v in report["peak_gpu_mb"].items()},
        "peak_rss_mb": round(max(report["peak_rss_mb"].values())),  # per-stage windows
        "size_mb": round(report["size_bytes"] / 2**20, 1),
        "directions": report["counts"]["directions"],
        "write_rows_per_s": round(
            sum(report["counts"].values()) / report["stage_seconds"]["write"]
        ),
        "write_mb_per_s": round(report["db_bytes"] / 2**20 / report["stage_seconds"]["write"], 1),
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


def _synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a timer measures it (CUDA calls return early)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_ov_decomposition(W_V: Any, W_O: Any, device: str) -> tuple[float, float]:
    """Seconds for the batched factored SVD and for a per-head full SVD of explicit OV."""
    import torch

    from ingest.svd import factored_svd

    def batched() -> None:
        factored_svd(W_V, W_O)
        _synchronize(device)

    def per_head() -> None:  # what the sprint notebook and SVDInterpreter do
        for h in range(W_V.shape[0]):
            torch.linalg.svd(W_V[h] @ W_O[h])
        _synchronize(device)

    batched()  # warm-up
    return _best_of(batched, 3), _best_of(per_head, 1)


def bench_decompose(device: str, large: bool) -> list[dict[str, Any]]:
    """Batched QR-factored OV SVD against a per-head full SVD of the explicit OV matrix."""
    import torch

    from ingest.random_models import RANDOM_SHAPES

    out = []
    for shape in ("gpt2-small", "gpt2-medium"):
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


def _percentiles_ms(samples: list[float]) -> tuple[float, float]:
    import numpy as np

    return (
        round(float(np.percentile(samples, 50)) * 1e3, 3),
        round(float(np.percentile(samples, 99)) * 1e3, 3),
    )


def realistic_vectors(n: int, seed: int = 0) -> tuple[Any, Any]:
    """``n`` synthetic unit directions with the covariance of the bundled model's real ones,
    and 200 real text queries (centered unembedding directions of vocabulary words)."""
    import numpy as np

    import atlas
    from ingest.job import IngestOptions, ingest

    with tempfile.TemporaryDirectory() as tmp:
        ingest(
            f"{tmp}/a",
            IngestOptions(model="minilm", device="cpu"),
            log=lambda _m: None,
            progress=False,
        )
        with atlas.open(f"{tmp}/a") as a:
            real = np.array(
                a.sql("SELECT vector FROM directions")["vector"].to_pylist(), np.float32
            )
            unembed = np.asarray(a.reader.unembedding("minilm"), dtype=np.float32)
    rng = np.random.default_rng(seed)
    cov = np.cov(real, rowvar=False)
    root = np.linalg.cholesky(cov + 1e-6 * np.eye(cov.shape[0]))
    data = (rng.standard_normal((n, real.shape[1]), dtype=np.float32) @ root.T).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    words = rng.choice(np.arange(1000, unembed.shape[0]), size=200, replace=False)
    queries = unembed[words] / np.linalg.norm(unembed[words], axis=1, keepdims=True)
    return data, queries


def bench_search(device: str, large: bool) -> list[dict[str, Any]]:
    """p50/p99 latency of one query (both valences), exact and approximate, and recall@10 of
    the approximate index against exact, at re-ranking factors 10 and 50 (the shipped one)."""
    import faiss
    import numpy as np

    from atlas.core.indexes import APPROXIMATE, EXACT, RERANK_FACTOR, build_index, merge_valences

    sizes = [10_000, 100_000, 200_000, 1_000_000]  # 200k: the default --exact-max
    data, queries = realistic_vectors(max(sizes))
    out = []
    for n in sizes:
        ids = np.arange(n)
        row: dict[str, Any] = {"directions": n, "dim": data.shape[1]}
        start = time.perf_counter()
        ann = build_index(data[:n], ids, APPROXIMATE)
        row["ann_build_seconds"] = round(time.perf_counter() - start, 1)
        runs = [("exact", build_index(data[:n], ids, EXACT), 0)]
        runs += [(f"rerank{factor}", ann, factor) for factor in (10, RERANK_FACTOR)]
        truth: list[set[int]] = []
        for name, index, factor in runs:
            if factor:
                faiss.downcast_index(index.index).k_factor = factor
            latencies, found = [], []
            for q in queries:
                t = time.perf_counter()
                sims, hit_ids = index.search(np.stack([q, -q]), 10)
                top_ids, _ = merge_valences(hit_ids, sims, 10)
                latencies.append(time.perf_counter() - t)
                found.append(set(top_ids.tolist()))
            row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = _percentiles_ms(latencies)
            if name == "exact":
                truth = found
            else:
                row[f"{name}_recall_at_10"] = round(
                    float(np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)])),
                    3,
                )
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.append(row)
    return out


def bench_e2e(device: str, large: bool) -> list[dict[str, Any]]:
    """The atlas ingest against the naive per-head pipeline, same booted model, boot excluded."""
    from bench.naive import naive_ingest
    from ingest.job import IngestOptions, ingest
    from ingest.loading import load_model

    out = []
    for spec in ["minilm"]:
        loaded = load_model(spec, device)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            report = ingest(
                f"{tmp}/atlas",
                IngestOptions(model=spec, device=device),
                loaded=loaded,
                log=lambda _m: None,
                progress=False,
            )
            ours = time.perf_counter() - start
            start = time.perf_counter()
            naive_parts = naive_ingest(loaded.bridge, loaded.vocabulary, f"{tmp}/naive.duckdb")
            naive = time.perf_counter() - start
        out.append(
            {
                "model": spec,
                "device": device,
                "atlas_seconds": round(ours, 2),
                "atlas_stages": report.stage_seconds,
                "naive_seconds": round(naive, 2),
                "naive_parts": {k: round(v, 2) for k, v in naive_parts.items()},
                "speedup": round(naive / ours, 1),
            }
        )
    return out


def bench_projection(device: str, large: bool) -> list[dict[str, Any]]:
    """Projection + top/bottom-k throughput as a fraction of plain matmul throughput."""
    import torch

    from ingest.project import CHUNK_BYTES, project

    gen = torch.Generator().manual_seed(0)
    n, d, vocab = 8192, 768, 50257
    vectors = torch.randn(n, d, generator=gen).to(device)
    W_U = torch.randn(d, vocab, generator=gen).to(device)
    rows = max(1, CHUNK_BYTES // (4 * vocab))

    def matmul_only() -> None:
        for start in range(0, n, rows):
            (vectors[start : start + rows] @ W_U).sum()
        _synchronize(device)

    def projection() -> None:
        project(vectors, W_U, 20)
        _synchronize(device)

    matmul_only()
    t_matmul = _best_of(matmul_only, 2)
    t_project = _best_of(projection, 2)
    flops = 2 * n * d * vocab
    return [
        {
            "vectors": n,
            "d_model": d,
            "d_vocab": vocab,
            "device": device,
            "matmul_gflops": round(flops / t_matmul / 1e9, 1),
            "projection_gflops": round(flops / t_project / 1e9, 1),
            "fraction_of_matmul": round(t_matmul / t_project, 3),
        }
    ]


SECTIONS: dict[str, Callable[[str, bool], list[dict[str, Any]]]] = {
    "decompose": bench_decompose,
    "ingest": bench_ingest,
    "search": bench_search,
    "e2e": bench_e2e,
    "projection": bench_projection,
}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Each table is one run of the command named below it; ratios are measured side by "
        "side within that run.",
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
        lines += [
            "",
            "Peak resident memory within each stage (MB), and DuckDB write throughput:",
            "",
            "| model | " + " | ".join(INGEST_STAGES) + " | rows/s | MB/s |",
            "|---|" + "---|" * (len(INGEST_STAGES) + 2),
        ]
        for r in results["ingest"]:
            mem = r["peak_rss_mb_by_stage"]
            lines.append(
                f"| {r['model']} | "
                + " | ".join(str(mem.get(k, "")) for k in INGEST_STAGES)
                + f" | {r['write_rows_per_s']:,} | {r['write_mb_per_s']} |"
            )
        lines.append("")
    if "e2e" in results:
        lines += [
            "## End to end: atlas ingest vs the naive pipeline (same booted model)",
            "",
            "Naive: SVDInterpreter per head and per layer (write side only), a top-k per vector, "
            "one INSERT per row. Boot excluded from both.",
            "",
            "| model | atlas (s) | naive (s) | naive SVD+projection | naive top-k | "
            "naive inserts | speedup |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["e2e"]:
            parts = r["naive_parts"]
            lines.append(
                f"| {r['model']} | {r['atlas_seconds']} | {r['naive_seconds']} | "
                f"{parts['svd_and_projection']} | {parts['topk']} | {parts['inserts']} | "
                f"{r['speedup']}x |"
            )
        lines.append("")
    if "projection" in results:
        lines += [
            "## Projection vs matrix-multiply throughput",
            "",
            "| vectors x d_model x d_vocab | matmul GFLOP/s | projection GFLOP/s | fraction |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['vectors']} x {r['d_model']} x {r['d_vocab']} | {r['matmul_gflops']} | "
            f"{r['projection_gflops']} | {r['fraction_of_matmul']:.0%} |"
            for r in results["projection"]
        ]
        lines.append("")
    if "search" in results:
        lines += [
            "## Search: one query (both valences), 200 real text queries",
            "",
            "Synthetic unit directions with the covariance of MiniLM's real ones (384-d). "
            "Approximate: 4-bit PQ fast-scan codes, the best `factor x k` candidates re-ranked "
            "exactly (`atlas/indexes.py`); recall@10 against exact search.",
            "",
            "| directions | exact p50 (ms) | exact p99 | approx. factor 10: p50 | p99 | "
            "recall@10 | factor 50 (shipped): p50 | p99 | recall@10 | approx. build (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        approx = (
            "rerank10_p50_ms",
            "rerank10_p99_ms",
            "rerank10_recall_at_10",
            "rerank50_p50_ms",
            "rerank50_p99_ms",
            "rerank50_recall_at_10",
            "ann_build_seconds",
        )
        lines += [
            f"| {r['directions']:,} | {r['exact_p50_ms']} | {r['exact_p99_ms']} | "
            + " | ".join(str(r.get(k, "")) for k in approx)
            + " |"
            for r in results["search"]
        ]
        lines.append("")
    return "\n".join(_with_commands(lines, results.get("runs", {})))


_SECTION_TITLES = {
    "## Decomposition": "decompose",
    "## Ingest end to end": "ingest",
    "## Search": "search",
    "## End to end": "e2e",
    "## Projection": "projection",
}


def _with_commands(lines: list[str], runs: dict[str, Any]) -> list[str]:
    """Put under each section title the command and date of the run that measured it."""
    out = []
    for line in lines:
        out.append(line)
        for prefix, name in _SECTION_TITLES.items():
            if line.startswith(prefix) and name in runs:
                run = runs[name]
                out += ["", f"`python bench/run.py {' '.join(run['argv'])}` ({run['date']})"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--large", action="store_true", help="add a random:gpt2-medium ingest")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = parser.parse_args()
    out = Path(args.out)
    # Sections run separately accumulate in one results file; each keeps its own command line.
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = machine()
    runs = results.setdefault("runs", {})
    for name in args.only.split(","):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = SECTIONS[name](args.device, args.large)
        runs[name] = {"date": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv[1:]}
        print(json.dumps(results[name], indent=1), file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    (ROOT / "BENCHMARKS.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
