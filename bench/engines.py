"""Vector engines against the atlas's own FAISS indexes, on the same 1e6 directions.

    pip install lancedb       # not a dependency of svd-atlas
    python bench/run.py --only engines [--large]

The vectors are the search benchmark's: synthetic unit directions with the covariance of
MiniLM's real ones (384-d, nearly isotropic), split into 100 "models" of 10,000 directions and
12 "layers"; 200 real word queries. Measured for each engine: build time, one query's p50/p99
latency and recall@10 against an exact scan, unfiltered and with a filter on model and layer
(model = one of 100, layer < 6: 0.5% of the directions). FAISS is the atlas's route: the
approximate index (PQ fast-scan, re-ranked exactly) for the whole collection, and for a
filter, the model's own shard (models are shards) scanned exactly among the layer's ids.
LanceDB (embedded, its Rust engine) runs IVF-PQ with exact re-ranking (``refine_factor``).
Milvus is not measured: Milvus Lite 3.x, the only Milvus that runs without a server, is a
Python engine with its own index set (HNSW, IVF_FLAT, IVF_SQ8; no IVF_PQ), about a second per
query at 24,000 vectors here, so it says nothing about Milvus's speed. Single-process, on this
machine's cores; a distributed deployment changes the scale, not the recall.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

N_MODELS, N_LAYERS = 100, 12
K = 10


def _percentiles(samples: list[float]) -> tuple[float, float]:
    return (
        round(float(np.percentile(samples, 50)) * 1e3, 2),
        round(float(np.percentile(samples, 99)) * 1e3, 2),
    )


def _measure(
    name: str,
    search: Callable[[np.ndarray, int], list[int]],
    queries: np.ndarray,
    truth: list[set[int]],
    built: float,
    note: str,
) -> dict[str, Any]:
    search(queries[0], 0)  # warm-up
    latencies, recall = [], []
    for j, (q, t) in enumerate(zip(queries, truth, strict=True)):
        start = time.perf_counter()
        found = search(q, j)
        latencies.append(time.perf_counter() - start)
        recall.append(len(set(found[:K]) & t) / K)
    p50, p99 = _percentiles(latencies)
    row = {"engine": name, "build_seconds": round(built, 1), "p50_ms": p50, "p99_ms": p99,
           "recall_at_10": round(float(np.mean(recall)), 3), "setting": note}  # fmt: skip
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def bench_engines(device: str, large: bool) -> list[dict[str, Any]]:
    from bench.run import realistic_vectors

    n = 1_000_000 if large else 200_000
    data, queries = realistic_vectors(n)
    ids = np.arange(n, dtype=np.int64)
    model = ids // (n // N_MODELS)
    layer = (ids % (n // N_MODELS)) // ((n // N_MODELS) // N_LAYERS)
    layer = np.minimum(layer, N_LAYERS - 1)
    # the filter: one model (the query's index picks it), its first six layers
    picked = [int(i % N_MODELS) for i in range(len(queries))]
    exact_all = data @ queries.T
    truth = [set(np.argsort(-exact_all[:, j])[:K].tolist()) for j in range(len(queries))]
    truth_f = []
    for j, m in enumerate(picked):
        keep = np.flatnonzero((model == m) & (layer < 6))
        truth_f.append(set(keep[np.argsort(-exact_all[keep, j])[:K]].tolist()))
    out: list[dict[str, Any]] = []
    out += _faiss(data, ids, model, layer, queries, truth, truth_f, picked)
    with tempfile.TemporaryDirectory() as tmp:
        out += _lancedb(tmp, data, ids, model, layer, queries, truth, truth_f, picked)
    for row in out:
        row["directions"] = n
    return out


def _faiss(data, ids, model, layer, queries, truth, truth_f, picked) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    from atlas.core.indexes import APPROXIMATE, EXACT, ResidualIndex, build_index

    start = time.perf_counter()
    whole = ResidualIndex([build_index(data, ids, APPROXIMATE)])
    built = time.perf_counter() - start
    rows = [_measure("faiss (svd-atlas)", lambda q, _j: whole.search(q[None], K)[1][0].tolist(),
                     queries, truth, built, "PQ fast-scan, 50k re-ranked")]  # fmt: skip
    start = time.perf_counter()
    shards = {
        m: ResidualIndex([build_index(data[model == m], ids[model == m], EXACT)])
        for m in range(N_MODELS)
    }
    built = time.perf_counter() - start
    allowed = {m: ids[(model == m) & (layer < 6)] for m in range(N_MODELS)}

    def filtered(q: np.ndarray, j: int) -> list[int]:
        m = picked[j]
        return shards[m].search_among(q[None], K, allowed[m])[1][0].tolist()

    rows.append(_measure("faiss (svd-atlas), filtered", filtered, queries, truth_f, built,
                         "the model's shard, exact among the layer's ids"))  # fmt: skip
    return rows


def _lancedb(tmp, data, ids, model, layer, queries, truth, truth_f, picked) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    try:
        import lancedb
    except ImportError:
        return []
    import pyarrow as pa

    db = lancedb.connect(f"{tmp}/lance")
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1)), data.shape[1])
    table = db.create_table(
        "directions",
        pa.table({"id": ids, "model": model, "layer": layer, "vector": vectors}),
    )
    start = time.perf_counter()
    table.create_index(metric="dot", num_partitions=int(np.sqrt(len(ids))), num_sub_vectors=96,
                       vector_column_name="vector")  # fmt: skip
    table.create_scalar_index("model")
    built = time.perf_counter() - start
    rows = []
    for nprobes, refine in ((20, 10), (100, 50)):

        def search(q: np.ndarray, _j: int, nprobes: int = nprobes, refine: int = refine
                   ) -> list[int]:  # fmt: skip
            hits = (table.search(q).distance_type("dot").nprobes(nprobes)
                    .refine_factor(refine).limit(K).select(["id"]).to_arrow())  # fmt: skip
            return hits["id"].to_pylist()

        rows.append(_measure("lancedb", search, queries, truth, built,
                             f"IVF-PQ, nprobes {nprobes}, refine {refine}"))  # fmt: skip

    def filtered(q: np.ndarray, j: int) -> list[int]:
        m = picked[j]
        hits = (table.search(q).distance_type("dot").where(f"model = {m} AND layer < 6")
                .nprobes(100).refine_factor(50).limit(K).select(["id"]).to_arrow())  # fmt: skip
        return hits["id"].to_pylist()

    rows.append(_measure("lancedb, filtered", filtered, queries, truth_f, built,
                         "prefilter, nprobes 100, refine 50"))  # fmt: skip
    return rows
