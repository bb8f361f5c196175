"""BENCHMARKS.md from bench/results/latest.json: one table per section, each under the command
and date of the run that measured it, and the memory-versus-size plot in docs/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ingest.report import STAGES

ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "docs" / "ingest-memory.png"


SERVE = ROOT / "bench" / "results" / "serve.json"  # written by bench/serve_load.py


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Each table is one run of the command named below it; every ratio is measured side by "
        "side within that run, against a named baseline given the same warm-up and repeats "
        "(best of 3 after one warm-up, unless a table says otherwise).",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), GPU: {m['gpu'] or 'none'}.",
        "",
    ]
    for title, key, render in SECTIONS:
        if key in results:
            run = results.get("runs", {}).get(key)
            lines += [f"## {title}", ""]
            if run:
                lines += [f"`python bench/run.py {' '.join(run['argv'])}` ({run['date']})", ""]
                lines += [f"Note: {run['note']}", ""] if run.get("note") else []
            lines += render(results[key])
            lines.append("")
    if SERVE.exists():
        import json

        serve = json.loads(SERVE.read_text())
        lines += ["## Server", "", f"`python bench/serve_load.py {' '.join(serve['argv'])}` "
                  f"({serve['date']})", "", *_server(serve), ""]  # fmt: skip
    return "\n".join(lines)


def _decompose(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "Every OV circuit of a shape (random weights). Baselines: TransformerLens's own route, "
        "`FactoredMatrix(W_V[h], W_O[h]).svd()` per head (what `SVDInterpreter` runs), and a "
        "full SVD of each explicit d_model x d_model matrix (the sprint notebook).",
        "",
        "| shape | heads | device | atlas batched (s) | FactoredMatrix per head (s) | ratio | "
        "explicit per head (s) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        explicit = r.get("explicit_seconds", "")
        ratio = f"{r['vs_explicit']}x" if "vs_explicit" in r else ""
        out.append(
            f"| {r['shape']} | {r['heads']} | {r['device']} | {r['batched_seconds']} | "
            f"{r['factored_matrix_seconds']} | {r['vs_factored_matrix']}x | {explicit} | {ratio} |"
        )
    return out


def _ingest(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "Fresh processes (imports included). `streamed`: one block at a time (the default); "
        "`whole model`: today's code with the model booted whole, then ingested from memory; "
        "`previous release`: `svd-atlas ingest` of the release before streaming (checked out "
        "with `git archive`), the path this one replaces. Peak RSS is GNU time's maximum "
        "resident set size of the whole process, for every row. Stage columns are busy "
        "seconds; the stages overlap in the pipeline, so "
        "they add up to more than the wall time. Waiting: seconds the compute stage waited for "
        "the next block, and for the writer.",
        "",
        "| model | parameters | path | wall (s) | import | "
        + " | ".join(STAGES)
        + " | waiting for blocks | for writer | peak RSS (MB) | bytes/parameter | "
        "directions |",
        "|---|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|---|---|",
    ]
    parameters = {r["model"]: r["parameters"] for r in rows if "parameters" in r}
    for r in rows:
        st, waiting = r.get("stage_seconds", {}), r.get("waiting", {})
        n_params = parameters[r["model"]]
        per_param = r["peak_rss_mb"] * 2**20 / n_params
        directions = f"{r['directions']:,}" if "directions" in r else ""
        out.append(
            f"| {r['model']} | {n_params / 1e6:.0f}M | {r['path']} | {r['wall_seconds']} | "
            f"{r.get('import_seconds', '')} | "
            + " | ".join(str(st.get(k, "")) for k in STAGES)
            + f" | {waiting.get('for_blocks', '')} | {waiting.get('for_writer', '')} | "
            f"{r['peak_rss_mb']:,} | {per_param:.1f} | {directions} |"
        )
    for model in parameters:
        pair = {r["path"].split(" (")[0]: r for r in rows if r["model"] == model}
        if "streamed" in pair and "previous release" in pair:
            new, old = pair["streamed"], pair["previous release"]
            out.append(
                f"\n{model}: streamed {new['wall_seconds']} s and {new['peak_rss_mb']:,} MB "
                f"against the previous release's {old['wall_seconds']} s and "
                f"{old['peak_rss_mb']:,} MB ({old['wall_seconds'] / new['wall_seconds']:.2f}x "
                f"the speed, {old['peak_rss_mb'] / new['peak_rss_mb']:.1f}x less memory)."
            )
    streamed = [r for r in rows if r["path"] == "streamed" and r["model"].startswith("random:")]
    if len(streamed) >= 2:
        _plot(streamed)
        out += ["", f"![peak RSS against model size]({PLOT.relative_to(ROOT)})"]
    return out


def _plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [r["parameters"] / 1e9 for r in rows]
    rss = [r["peak_rss_mb"] / 1024 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    ax.plot(params, rss, "o-", label="streamed ingest, peak RSS")
    ax.plot(
        params, [p * 4 for p in params], "--", color="grey", label="one float32 copy of the model"
    )
    for r, x, y in zip(rows, params, rss, strict=True):
        ax.annotate(r["model"].replace("random:", ""), (x, y), textcoords="offset points",
                    xytext=(4, 6), fontsize=8)  # fmt: skip
    ax.set_xlabel("parameters (billions)")
    ax.set_ylabel("GiB")
    ax.set_title("Ingest memory against model size (2 CPU cores)", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(PLOT, dpi=150)
    plt.close(fig)


def _memory(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "gpt2-xl's width (1600) with 12 and with 48 layers, and llama-7b's (4096, gated MLP of "
        "11008, grouped-query attention) with 2 of its 32 blocks, saved as folders (one "
        "safetensors shard per layer) and streamed with --max-rank 16 (every block loaded, "
        "processed and decomposed in full; fewer directions projected).",
        "",
        "| width of | layers | parameters | wall (s) | peak RSS (MB) | peak GPU (MB) |",
        "|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r.get('shape', 'gpt2-xl')} | {r['layers']} | {r['parameters'] / 1e6:.0f}M | "
        f"{r['wall_seconds']} | {r['peak_rss_mb']:,} | {r.get('peak_gpu_mb') or ''} |"
        for r in rows
    ]
    xl = {r["layers"]: r for r in rows if r.get("shape", "gpt2-xl") == "gpt2-xl"}
    if {12, 48} <= set(xl):
        ratio = xl[48]["peak_rss_mb"] / xl[12]["peak_rss_mb"]
        out += ["", f"48 layers against 12: {ratio:.2f}x the peak RSS."]
        llama = [r for r in rows if r.get("shape") == "llama-7b"]
        if llama:
            # 2 -> 32 blocks is two quadruplings of depth, each as 12 -> 48 layers
            out.append(
                f"random:llama-7b on paper (32 blocks, not run here): about "
                f"{llama[0]['peak_rss_mb'] * ratio**2:,.0f} MB of RSS, its 2-block figure grown "
                f"twice by the 12-to-48-layer factor ({ratio:.2f}x per quadrupling of depth)."
            )
    return out


def _e2e(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "MiniLM. Baseline: `bench/naive.py`, TransformerLens's `SVDInterpreter` per head and per "
        "layer with a vectorized top-k, writing its rows in one bulk insert from Arrow (and, "
        "once, one INSERT per row as the sprint notebook did). It does about half the work of "
        "an ingest: the write side only, top tokens only.",
        "",
        "| measured | atlas (s) | naive, bulk insert (s) | ratio | naive, row-at-a-time "
        "inserts (s) | ratio | compute only: atlas / naive (s) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        where = "same booted model" if r["in_process"] else "whole processes (imports, boot)"
        rows_part = (
            f"{r['naive_rows_seconds']} | {r['vs_rows']}x" if "naive_rows_seconds" in r else " | "
        )
        compute = (
            f"{r['atlas_compute_seconds']} / {r['naive_compute_seconds']} | {r['compute_ratio']}x"
            if "compute_ratio" in r
            else " | "
        )
        out.append(
            f"| {where} | {r['atlas_seconds']} | {r['naive_bulk_seconds']} | {r['vs_bulk']}x | "
            f"{rows_part} | {compute} |"
        )
    return out


def _projection(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "The same chunked matrix products with and without the top/bottom-k selection.",
        "",
        "| vectors x d_model x d_vocab | device | matmul GFLOP/s | projection GFLOP/s | fraction |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {r['vectors']} x {r['d_model']} x {r['d_vocab']} | {r['device']} | "
        f"{r['matmul_gflops']} | {r['projection_gflops']} | {r['fraction_of_matmul']:.0%} |"
        for r in rows
    ]
    return out


def _search(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "One query (both valences), 200 real text queries, over synthetic unit directions with "
        "the covariance of MiniLM's real ones (384-d). Approximate: 4-bit PQ fast-scan codes, "
        "the best `factor x k` candidates re-ranked exactly (`atlas/core/indexes.py`); "
        "recall@10 against exact search. Single runs (latency percentiles over 200 queries).",
        "",
        "| directions | exact p50 (ms) | exact p99 | approx. factor 10: p50 | p99 | "
        "recall@10 | factor 50 (shipped): p50 | p99 | recall@10 | approx. build (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("rerank10_p50_ms", "rerank10_p99_ms", "rerank10_recall_at_10", "rerank50_p50_ms",
            "rerank50_p99_ms", "rerank50_recall_at_10", "ann_build_seconds")  # fmt: skip
    out += [
        f"| {r['directions']:,} | {r['exact_p50_ms']} | {r['exact_p99_ms']} | "
        + " | ".join(str(r.get(k, "")) for k in keys)
        + " |"
        for r in rows
    ]
    return out


def _jobs(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "One job of identical models (`svd-atlas ingest --from FILE`), serially in one process "
        "against `--ray` (a local Ray cluster started by the command; its start-up and the "
        "planning boot of every model included), fresh processes, best of 2 after one warm-up "
        "of each.",
        "",
        "| models | cores | serial (s) | Ray (s) | speed-up | per model, serial (s) | Ray start "
        "and stop (s) | peak RSS serial / Ray driver (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r['models']} x {r['model']} | {r['cpus']} | {r['serial_seconds']} | "
        f"{r['ray_seconds']} | {r['speedup']}x | {r['per_model_seconds']} | "
        f"{r['ray_start_seconds']} | {r['serial_peak_rss_mb']:,} / "
        f"{r['ray_driver_peak_rss_mb']:,} |"
        for r in rows
    ]
    for r in rows:
        out += ["", "Computed from the per-model time (each worker as fast as one ingest alone "
                "here, planning and scheduling not counted): "
                + "; ".join(f"{k}: {v:,} s" for k, v in r["computed"].items()) + "."]  # fmt: skip
    return out


def _zoo(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "Search across the first N models of one atlas of 100 `random:llama-tiny` models (5,120 "
        "directions of width 256 each: a 5.2 MB index), fresh processes: residual space "
        "streamed (each model's index read, searched, dropped), residual space with every "
        "index loaded first (`Atlas.load_indexes`, what the server does), and token space. "
        "Two searches per process (`fire`, then `water`); single runs.",
        "",
        "| models | space | indexes | process wall (s) | index loading (s) | first search (ms) | "
        "second search (ms) | indexes held | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r['models']} | {r['space']} | {r['indexes'] if r['space'] == 'residual' else ''} | "
        f"{r['wall_seconds']} | {r['load_seconds']} | {r['first_search_ms']} | "
        f"{r['second_search_ms']} | {r['indexes_held']} | {r['peak_rss_mb']:,} |"
        for r in rows
    ]
    if rows:
        out += ["", f"Ingesting the 100 models as one job: {rows[0]['zoo_ingest_seconds']} s."]
    return out


def _server(r: dict[str, Any]) -> list[str]:
    lib, cores = r["library_search"], r["cores"]
    allowed = {int(n): rate for n, rate in lib["parallel_per_s"].items()}
    measured = ", ".join(f"{rate:,.0f} searches/s from {n}" for n, rate in allowed.items())
    out = [
        f"`svd-atlas serve` on a {r['directions']:,}-direction atlas (approximate index), "
        "clients on the same machine (threads of the benchmark process, `http.client`, one "
        f"keep-alive connection each) sharing its {cores} cores with the server. Baselines in "
        "the same run: the library's own search, in process with the index loaded, p50 "
        f"{lib['p50_ms']} ms, p99 {lib['p99_ms']} ms, mean {lib['mean_ms']} ms; what the cores "
        "allow, measured as the library's throughput from as many threads of one process as "
        "there are clients, each searching on one thread as the server's workers do under "
        "load: "
        f"{measured} threads; one search as a fresh `svd-atlas search` process: "
        f"{r['cli_cold_search']['best_seconds']} s.",
        "",
        "| workers | start-up (s) | resident at start / after (MB) | clients | requests | p50 (ms) "
        "| p99 (ms) | throughput (/s) | of what the cores allow | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server in r["servers"]:
        for run in server["runs"]:
            ceiling = allowed[run["clients"]]
            share = f"{run['throughput_per_s'] / ceiling:.0%}" if run["mix"] == "search" else ""
            out.append(
                f"| {server['workers']} | {server['startup_seconds']} | "
                f"{server['resident_mb_at_start']:,.0f} / {server['resident_mb_after']:,.0f} | "
                f"{run['clients']} | {run['mix']} | {run['p50_ms']} | {run['p99_ms']} | "
                f"{run['throughput_per_s']} | {share} | {run['errors']} |"
            )
    return out


def _engines(rows: list[dict[str, Any]]) -> list[str]:
    from bench.engines import N_LAYERS, N_MODELS

    out = [
        f"The same {rows[0]['directions']:,} unit vectors (MiniLM's covariance, 384-d, nearly "
        f"isotropic) in {N_MODELS} models of {N_LAYERS} layers, 200 real text queries, recall@10 "
        "against an exact numpy scan; filtered: one model and its first six layers. Each engine "
        "in its embedded mode, in this process, single runs.",
        "",
        "| engine | setting | build (s) | p50 (ms) | p99 (ms) | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['engine']} | {r['setting']} | {r['build_seconds']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['recall_at_10']} |"
        )
    return out


SECTIONS = [
    ("Decomposition: the batched factored OV SVD", "decompose", _decompose),
    ("Ingest: memory and time against model size", "ingest", _ingest),
    ("Memory does not grow with depth", "memory", _memory),
    ("End to end: the atlas against a naive pipeline", "e2e", _e2e),
    ("Projection against matrix-multiply throughput", "projection", _projection),
    ("Search", "search", _search),
    ("A job of many models: serial and on Ray", "jobs", _jobs),
    ("Search across many models", "zoo", _zoo),
    ("Vector engines on the same vectors", "engines", _engines),
]
