"""Where a library search's time goes on one atlas: the bare index search against the whole
search with hits described, side by side over the same queries in one process, and one search
as a fresh ``svd-atlas search`` process.

    python bench/search_path.py [ATLAS ...]   # default: the 1e6 atlas (bench/million.py)

For each atlas (its first model): p50/p99 of the bare index search (both valences, merged),
of the index search with its answers scored from the store (``nearest_residual``), of
describing ten hits, of ``Atlas.search`` (a vector, words, a direction), of ``trace`` one hop
and of a direction's card; and the ratio of described search to bare index search. "Bare"
is measured twice: the atlas's own index object (its shards searched as one, both valences
merged) and the raw FAISS shards read by ``faiss.read_index`` and searched in a loop, as a
user of FAISS alone would. Queries are words embedded by the model's unembedding (200,
cycled over a fixed list). A fresh process: best and median of 5 after one warm-up (the
files in the page cache, as for a researcher's second question). Single runs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WORDS = ["fire", "water", "king", "music", "money", "city", "doctor", "green", "war", "food",
         "river", "computer", "winter", "law"]  # fmt: skip


def _p(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    at = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 2)  # noqa: E731
    return at(0.5), at(0.99)


def _timed(work: Callable[[Any], object], inputs: list[Any]) -> tuple[float, float]:
    times = []
    for x in inputs:
        start = time.perf_counter()
        work(x)
        times.append(time.perf_counter() - start)
    return _p(times)


def measure(location: str, n_queries: int = 200) -> dict[str, Any]:
    import atlas
    from atlas.core.errors import AtlasWarning
    from atlas.core.indexes import merge_valences
    from query.filters import Filters
    from query.search import describe, nearest_residual, resolve_query

    warnings.simplefilter("ignore", AtlasWarning)
    with atlas.open(location) as a:
        a.load_indexes(8 << 30)
        r = a.reader
        model = r.model_ids()[0]
        index = r.residual_index(model)
        words = [WORDS[i % len(WORDS)] for i in range(n_queries)]
        vectors = [resolve_query(r, text=w).vectors[model] for w in words]
        rng = np.random.default_rng(0)
        ids = index.ids()
        directions = [int(ids[i]) for i in rng.integers(len(ids), size=n_queries)]
        hits = [
            [(0.5, int(d), model) for d in rng.choice(ids, 10, replace=False)]
            for _ in range(n_queries)
        ]
        for q in vectors[:20]:  # warm-up
            a.search(vector=q, k=10)

        def bare(q: np.ndarray) -> None:
            sims, found = index.search(np.stack([q, -q]), 11)
            merge_valences(found, sims, 11)

        row: dict[str, Any] = {"atlas": location, "directions": index.ntotal}
        row["bare_index"] = _timed(bare, vectors)
        scored = lambda q: nearest_residual(r, model, q, Filters(), 11)  # noqa: E731
        row["index_scored"] = _timed(scored, vectors)
        row["describe_10"] = _timed(lambda s: describe(r, s, "residual"), hits)
        row["search_vector"] = _timed(lambda q: a.search(vector=q, k=10), vectors)
        row["search_words"] = _timed(lambda w: a.search(w, k=10), words)
        row["search_direction"] = _timed(lambda d: a.search(direction=d, k=10), directions)
        row["trace_1_hop"] = _timed(lambda d: a.trace(d, hops=1), directions[:50])
        row["card"] = _timed(lambda d: a.card(d), directions)
        row["described_over_bare_p50"] = round(row["search_vector"][0] / row["bare_index"][0], 2)
    with atlas.open(location) as lazy:  # no index kept: every hit's vector read from DuckDB
        for q in vectors[:20]:
            lazy.search(vector=q, k=10)
        row["search_vector_index_not_kept"] = _timed(lambda q: lazy.search(vector=q, k=10), vectors)
    row["raw_faiss_shards"] = raw_faiss(location, vectors)
    row["described_over_raw_faiss_p50"] = round(
        row["search_vector"][0] / row["raw_faiss_shards"][0], 2
    )
    return row


def raw_faiss(location: str, vectors: list[np.ndarray]) -> tuple[float, float]:
    """The same queries against the store's FAISS shards alone, read with FAISS's defaults."""
    import faiss

    import atlas

    with atlas.open(location) as a:
        store = a.reader.store_path(a.reader.model_ids()[0])
    shards = [faiss.read_index(str(p)) for p in sorted(store.glob("residual-*.faiss"))]

    def search(q: np.ndarray) -> None:
        both = np.stack([q, -q])
        found = [s.search(both, 11) for s in shards]
        sims = np.concatenate([f[0] for f in found], axis=1)
        np.argsort(-sims, axis=1)[:, :11]

    for q in vectors[:20]:
        search(q)
    return _timed(search, vectors)


def cli_cold(location: str, runs: int = 5) -> dict[str, float]:
    """One words search as a fresh ``svd-atlas search`` process, after one warm-up."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", "from atlas.cli import main; main()", "--atlas", location,
               "search", "fire", "-k", "10"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, env=env)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return {"best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3)}


def breakdown(location: str, n_queries: int = 200) -> dict[str, Any]:
    """Where a words search's time goes, end to end over HTTP, p50 of each stage over the same
    queries in one run: the bare index search, the rest of the library search (words
    embedded, answers scored from the store, hits described), serialising the hits to JSON,
    and what HTTP adds (one keep-alive client against ``svd-atlas serve``, one worker); each
    as a share of the HTTP p50."""
    import httpx

    import atlas
    from atlas.core.errors import AtlasWarning
    from atlas.core.indexes import merge_valences
    from bench.serve_load import start_server
    from query.search import resolve_query

    warnings.simplefilter("ignore", AtlasWarning)
    words = [WORDS[i % len(WORDS)] for i in range(n_queries)]
    process, url, _ = start_server(Path(location), 1)
    try:
        with atlas.open(location) as a, httpx.Client(base_url=url, timeout=30) as http:
            a.load_indexes(8 << 30)
            r = a.reader
            model = r.model_ids()[0]
            index = r.residual_index(model)
            vectors = [resolve_query(r, text=w).vectors[model] for w in words]
            for w in words[:20]:  # warm-up
                a.search(w, k=10)
                http.get("/api/search", params={"text": w, "k": 10}).raise_for_status()

            def bare(q: np.ndarray) -> None:
                sims, found = index.search(np.stack([q, -q]), 11)
                merge_valences(found, sims, 11)

            hits = [a.search(w, k=10) for w in words]
            p50 = {
                "index": _timed(bare, vectors)[0],
                "library": _timed(lambda w: a.search(w, k=10), words)[0],
                "serialise": _timed(lambda h: json.dumps([x.to_dict() for x in h]), hits)[0],
                "http": _timed(
                    lambda w: http.get("/api/search", params={"text": w, "k": 10}), words
                )[0],
            }
    finally:
        process.terminate()
        process.wait()
    stages = {
        "index": p50["index"],
        "describe": p50["library"] - p50["index"],
        "serialise": p50["serialise"],
        "http": p50["http"] - p50["library"] - p50["serialise"],
    }
    total = p50["http"]
    return {
        "atlas": location,
        "p50_ms": p50,
        "share": {k: round(v / total, 3) for k, v in stages.items()},
    }


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.million import million_atlas

    for location in sys.argv[1:] or [str(million_atlas())]:
        row = measure(location)
        print(json.dumps(row), flush=True)
        print(json.dumps({"cli_search_process": cli_cold(location)}), flush=True)
        print(json.dumps({"breakdown": breakdown(location)}), flush=True)
