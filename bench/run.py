"""svd-atlas benchmarks: every figure is measured side by side with its baseline in one run.

    python bench/run.py [--only SECTION,...] [--device cpu|cuda] [--large]

Sections: decompose, ingest, memory, e2e, projection, search, jobs, zoo (``bench/scale.py``),
engines (``bench/engines.py``).
``--large`` adds the big shapes
(gpt2-medium to gpt2-xl ingests, the 1e6 search). Writes bench/results/latest.json and
BENCHMARKS.md (machine details included). Every baseline is named, and gets the same warm-up
and repeats as what it is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/run.py` from anywhere: bench.* is importable
from bench.engines import bench_engines  # noqa: E402
from bench.scale import bench_jobs, bench_zoo  # noqa: E402
from bench.timing import timed_process  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REPEATS = 3  # best of, after one warm-up, on both sides of every ratio


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


def _best_of(fn: Callable[[], Any], repeats: int = REPEATS) -> float:
    fn()  # warm-up
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


# --- decompose ----------------------------------------------------------------------------


def bench_decompose(device: str, large: bool) -> list[dict[str, Any]]:
    """Every OV circuit of a shape: the atlas's batched QR-factored SVD against TransformerLens's
    own route (``FactoredMatrix(W_V[h], W_O[h]).svd()`` per head, what ``SVDInterpreter`` does)
    and against a full SVD of each explicit d_model x d_model matrix (the sprint notebook)."""
    import torch
    from transformer_lens import FactoredMatrix

    from atlas.models.random_models import random_config
    from atlas.models.svd import factored_svd

    out = []
    for shape in ("gpt2-small", "gpt2-medium"):
        c = random_config(shape)
        n, d, d_head = c.n_layer * c.n_head, c.n_embd, c.n_embd // c.n_head
        gen = torch.Generator().manual_seed(0)
        W_V = (torch.randn(n, d, d_head, generator=gen) * 0.02).to(device)
        W_O = (torch.randn(n, d_head, d, generator=gen) * 0.02).to(device)

        def batched(W_V: Any = W_V, W_O: Any = W_O) -> None:
            factored_svd(W_V, W_O)
            _synchronize(device)

        def transformer_lens(W_V: Any = W_V, W_O: Any = W_O) -> None:
            for h in range(W_V.shape[0]):
                FactoredMatrix(W_V[h], W_O[h]).svd()
            _synchronize(device)

        def explicit(W_V: Any = W_V, W_O: Any = W_O) -> None:
            for h in range(W_V.shape[0]):
                torch.linalg.svd(W_V[h] @ W_O[h])
            _synchronize(device)

        row: dict[str, Any] = {"shape": shape, "heads": n, "device": device}
        row["batched_seconds"] = round(_best_of(batched), 4)
        row["factored_matrix_seconds"] = round(_best_of(transformer_lens), 4)
        row["vs_factored_matrix"] = round(
            row["factored_matrix_seconds"] / row["batched_seconds"], 1
        )
        if shape == "gpt2-small" or large:
            row["explicit_seconds"] = round(_best_of(explicit), 3)
            row["vs_explicit"] = round(row["explicit_seconds"] / row["batched_seconds"], 1)
        out.append(row)
    return out


# --- ingest: streamed vs whole-model, in fresh processes ------------------------------------


PREVIOUS_RELEASE = "109b695"  # the last commit before streaming ingest: "today's path"


def ingest_subprocess(model: str, device: str, whole: bool = False, max_rank: int | None = None
                      ) -> dict[str, Any]:  # fmt: skip
    """One ingest in a fresh process (imports included): streamed, or ``whole`` (the model
    booted whole first and ingested from memory by today's code)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(ROOT / "bench" / "ingest_report.py"), f"{tmp}/atlas",
                   model, device]  # fmt: skip
        command += ["--whole"] if whole else []
        command += ["--max-rank", str(max_rank)] if max_rank else []
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        stdout, wall, peak_mb = timed_process(command, env)
    report = json.loads(stdout.strip().splitlines()[-1])
    return {
        "model": model if not model.startswith("/") else Path(model).name,
        "path": "whole model" if whole else "streamed",
        "device": device,
        "wall_seconds": round(wall, 1),
        "import_seconds": report["import_seconds"],
        "ingest_seconds": report["wall_seconds"],
        "stage_seconds": report["stage_seconds"],
        "waiting": report["waiting"],
        "peak_rss_mb": round(peak_mb),
        "peak_gpu_mb": round(report["peak_gpu_mb"]),
        "size_mb": round(report["size_bytes"] / 2**20, 1),
        "directions": report["counts"]["directions"],
        "parameters": report["parameters"],
    }


def ingest_previous_release(model: str, device: str) -> dict[str, Any]:
    """``svd-atlas ingest MODEL`` as the previous release runs it (``git archive`` of
    PREVIOUS_RELEASE, the whole model booted then decomposed), in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "previous"
        tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tree)}
        command = [sys.executable, "-c", "from atlas.cli import main; main()",
                   "--atlas", f"{tmp}/atlas", "ingest", model, "--device", device]  # fmt: skip
        _, wall, peak_mb = timed_process(command, env, cwd=str(tree))
    return {
        "model": model,
        "path": f"previous release ({PREVIOUS_RELEASE})",
        "device": device,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_mb),
    }


def bench_ingest(device: str, large: bool) -> list[dict[str, Any]]:
    """Streamed ingests of growing shapes; beside gpt2-small and gpt2-medium, today's code on
    the whole model and the previous release (the path this release replaces)."""
    models = ["minilm", "random:gpt2-small"]
    models += ["random:gpt2-medium", "random:gpt2-large", "random:gpt2-xl"] if large else []
    out = []
    for model in models:
        out.append(ingest_subprocess(model, device))
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        if model in ("random:gpt2-small", "random:gpt2-medium"):
            out.append(ingest_subprocess(model, device, whole=True))
            out.append(ingest_previous_release(model, device))
            for row in out[-2:]:
                print(json.dumps(row), file=sys.stderr, flush=True)
    return out


def bench_memory(device: str, large: bool) -> list[dict[str, Any]]:
    """Peak RSS does not grow with depth: gpt2-xl's width with 12 layers and with 48, saved as
    folders (one shard per layer) and streamed; and llama-7b's width with 2 of its 32 blocks
    (what a 7B model costs here, its depth aside). --max-rank 16 keeps the projection short
    while every block is still loaded, processed and decomposed in full."""
    from transformers import GPT2Config, LlamaConfig

    from atlas.models.random_models import RANDOM_SHAPES, save_random_model

    shapes = [("gpt2-xl", GPT2Config, "n_layer", "GPT2LMHeadModel", n) for n in (12, 48)]
    shapes.append(("llama-7b", LlamaConfig, "num_hidden_layers", "LlamaForCausalLM", 2))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, config_class, depth, architecture, layers in shapes:
            config = config_class(**{**RANDOM_SHAPES[shape][1], depth: layers})
            config.architectures = [architecture]
            folder = save_random_model(shape, f"{tmp}/{shape}-{layers}", shards=layers,
                                       config=config)  # fmt: skip
            row = ingest_subprocess(str(folder), device, max_rank=16)
            row["layers"], row["shape"] = layers, shape
            out.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            shutil.rmtree(folder)  # a 7B-wide folder is gigabytes
    return out


# --- e2e: the atlas against a naive pipeline ------------------------------------------------


def bench_e2e(device: str, large: bool) -> list[dict[str, Any]]:
    """The atlas ingest against the naive TransformerLens pipeline (``bench/naive.py``), both
    on the same booted model (boot excluded), and both as whole processes."""
    from atlas.models.loading import load_model
    from bench.naive import naive_ingest
    from ingest.job import IngestOptions, ingest

    out = []
    loaded = load_model("minilm", device)
    with tempfile.TemporaryDirectory() as tmp:

        def atlas_run() -> dict[str, Any]:
            root = f"{tmp}/atlas-{time.monotonic_ns()}"
            options = IngestOptions(model="minilm", device=device)
            report = ingest(root, options, loaded=loaded, log=lambda _m: None)
            return report.stage_seconds

        def naive_run(row_by_row: bool) -> dict[str, float]:
            db = f"{tmp}/naive-{time.monotonic_ns()}.duckdb"
            return naive_ingest(loaded.bridge, loaded.vocabulary, db, row_by_row=row_by_row)

        timed: dict[str, tuple[float, Any]] = {}
        for name, run in (("atlas", atlas_run), ("naive_bulk", lambda: naive_run(False))):
            parts: list[Any] = []
            seconds = _best_of(lambda run=run, parts=parts: parts.append(run()))
            timed[name] = (seconds, parts[-1])
        start = time.perf_counter()
        row_parts = naive_run(True)  # row-by-row inserts: once (about two minutes)
        timed["naive_rows"] = (time.perf_counter() - start, row_parts)

        stages = timed["atlas"][1]
        atlas_compute = sum(stages.get(k, 0.0) for k in ("decompose", "project", "load"))
        naive_compute = sum(v for k, v in timed["naive_bulk"][1].items() if k != "write")
        out.append(
            {
                "model": "minilm",
                "device": device,
                "in_process": True,
                "atlas_seconds": round(timed["atlas"][0], 2),
                "naive_bulk_seconds": round(timed["naive_bulk"][0], 2),
                "naive_rows_seconds": round(timed["naive_rows"][0], 2),
                "vs_bulk": round(timed["naive_bulk"][0] / timed["atlas"][0], 2),
                "vs_rows": round(timed["naive_rows"][0] / timed["atlas"][0], 1),
                "atlas_compute_seconds": round(atlas_compute, 2),
                "naive_compute_seconds": round(naive_compute, 2),
                "compute_ratio": round(naive_compute / atlas_compute, 2),
                "atlas_stages": stages,
                "naive_parts": {k: round(v, 2) for k, v in timed["naive_bulk"][1].items()},
            }
        )
        out.append(_whole_processes(tmp, device))
    return out


def _whole_processes(tmp: str, device: str) -> dict[str, Any]:
    """``svd-atlas ingest minilm`` and the naive script as whole processes, best of 3 each."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    def atlas_process() -> None:
        subprocess.run(
            [sys.executable, "-c", "from atlas.cli import main; main()",
             "--atlas", f"{tmp}/p-{time.monotonic_ns()}", "ingest", "minilm", "--device", device],
            check=True, capture_output=True, env=env,
        )  # fmt: skip

    def naive_process() -> None:
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "naive.py"), "minilm",
             f"{tmp}/n-{time.monotonic_ns()}.duckdb"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip

    ours, naive = _best_of(atlas_process), _best_of(naive_process)
    return {
        "model": "minilm",
        "device": device,
        "in_process": False,
        "atlas_seconds": round(ours, 2),
        "naive_bulk_seconds": round(naive, 2),
        "vs_bulk": round(naive / ours, 2),
    }


# --- projection ---------------------------------------------------------------------------


def bench_projection(device: str, large: bool) -> list[dict[str, Any]]:
    """Projection + top/bottom-k throughput as a fraction of the same chunked matrix products
    alone (the same chunks, nothing added to either side)."""
    import torch

    from ingest.project import CHUNK_BYTES, project

    gen = torch.Generator().manual_seed(0)
    n, d, vocab = 8192, 768, 50257
    vectors = torch.randn(n, d, generator=gen).to(device)
    W_U = torch.randn(d, vocab, generator=gen).to(device)
    rows = max(1, CHUNK_BYTES // (4 * vocab))

    def matmul_only() -> None:
        for start in range(0, n, rows):
            _ = vectors[start : start + rows] @ W_U
        _synchronize(device)

    def projection() -> None:
        project(vectors, W_U, 20)
        _synchronize(device)

    t_matmul, t_project = _best_of(matmul_only), _best_of(projection)
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


# --- search -------------------------------------------------------------------------------


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

    root, queries = real_covariance(seed)
    rng = np.random.default_rng(seed)
    return synthetic_directions(rng, root, n), queries


def real_covariance(seed: int = 0) -> tuple[Any, Any]:
    """The Cholesky factor of the covariance of MiniLM's real directions (ingested here), and
    200 real text queries: centered unembedding directions of vocabulary words."""
    import numpy as np

    import atlas
    from ingest.job import IngestOptions, ingest

    with tempfile.TemporaryDirectory() as tmp:
        ingest(
            f"{tmp}/a",
            IngestOptions(model="minilm", device="cpu"),
            log=lambda _m: None,
        )
        with atlas.open(f"{tmp}/a") as a:
            real = np.array(
                a.sql("SELECT vector FROM directions")["vector"].to_pylist(), np.float32
            )
            unembed = np.asarray(a.reader.unembedding("minilm"), dtype=np.float32)
    rng = np.random.default_rng(seed)
    cov = np.cov(real, rowvar=False)
    root = np.linalg.cholesky(cov + 1e-6 * np.eye(cov.shape[0]))
    words = rng.choice(np.arange(1000, unembed.shape[0]), size=200, replace=False)
    queries = unembed[words] / np.linalg.norm(unembed[words], axis=1, keepdims=True)
    return root, queries


def synthetic_directions(rng: Any, root: Any, n: int) -> Any:
    """``n`` unit vectors drawn with the covariance ``root @ root.T``."""
    import numpy as np

    data = (rng.standard_normal((n, root.shape[0]), dtype=np.float32) @ root.T).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data


def bench_search(device: str, large: bool) -> list[dict[str, Any]]:
    """p50/p99 latency of one query (both valences), exact and approximate, and recall@10 of
    the approximate index against exact, at re-ranking factors 10 and 50 (the shipped one)."""
    import faiss
    import numpy as np

    from atlas.core.indexes import APPROXIMATE, EXACT, RERANK_FACTOR, build_index, merge_valences

    sizes = [10_000, 100_000, 200_000] + ([1_000_000] if large else [])
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


SECTIONS: dict[str, Callable[[str, bool], list[dict[str, Any]]]] = {
    "decompose": bench_decompose,
    "ingest": bench_ingest,
    "memory": bench_memory,
    "e2e": bench_e2e,
    "projection": bench_projection,
    "search": bench_search,
    "jobs": bench_jobs,
    "zoo": bench_zoo,
    "engines": bench_engines,
}


def main() -> None:
    from bench.report import markdown

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--large", action="store_true", help="the big shapes too")
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
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    (ROOT / "BENCHMARKS.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
