"""The 1e7 tier: search routes over 10,000,000 directions whose vectors stay on disk.

    python bench/ten_million.py              # builds data/bench/1e7 once (15 GB), measures
    python bench/ten_million.py --n 2000000  # a smaller tier, the same routes

The vectors are synthetic unit directions with the covariance of MiniLM's real ones (384-d,
``bench.run.real_covariance``, as the 1e6 search benchmark draws them), written once as a
``.npy`` file; the queries are 200 real text queries (centered unembedding directions of
words); recall@10 is against the exact top 10 by ``|cos|`` (both valences), computed here by
one chunked scan of every vector for all queries.

Routes, each measured in a fresh process that opens its index and maps the vectors (so its
peak resident set is its own: the index in memory, and the pages of vectors it touched), the
same 200 queries after 20 warm-up ones, both valences as the atlas searches:

- ``atlas``: the atlas's own index, as an ingest writes it (``atlas.core.store.IndexShards``:
  shards of whole "layers" of at least 256 MB, each with its own codes and its full vectors)
  and as the library reads and searches it (``ResidualIndex``: the codes in memory, the full
  vectors memory-mapped from the shard files, one candidate budget re-ranked for all shards),
  without describing the hits;
- ``pq``: one index of the same kind of codes over every vector (4-bit PQ fast-scan, ``d/2``
  sub-quantizers, one codebook), its rerank reading the candidates' vectors from the vectors
  file with ``pread``; on one thread and on two (one valence each: FAISS splits a search by
  query);
- ``pq-sharded``: the same codes in ``SHARDS`` shards (one per core) searched on as many
  threads, each for both valences in one pass over its codes (FAISS's fast-scan scores a
  block of queries per pass: two queries cost 1.3x one), the candidates merged;
- ``pq-half``: the same with ``d/4`` sub-quantizers (codes half the size, coarser);
- ``ivfpq``: the codes split into ``NLIST`` inverted lists by a coarse quantizer, ``nprobe``
  of them scanned per query, the same rerank;
- ``exact scan``: every vector read from the mapped file, a chunk at a time (10 queries: each
  reads the whole file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from atlas.core.indexes import APPROXIMATE, ResidualIndex, merge_valences, shard_files  # noqa: E402
from atlas.core.store import IndexShards  # noqa: E402

K = 10
RERANK_FACTOR = 50  # candidates re-ranked exactly per valence: today's index's k_factor
NLIST = 2048
NPROBES = (64, 256)
CHUNK = 500_000
SHARDS = 2
ATLAS_LAYER = 32_768  # vectors a "layer" adds to the atlas's shards (a shard holds whole layers)


def build(folder: Path, n: int) -> None:
    """Vectors, queries, exact answers and both indexes, each written once."""
    import faiss

    from bench.run import real_covariance, synthetic_directions

    folder.mkdir(parents=True, exist_ok=True)
    vectors_path = folder / "vectors.npy"
    if not (folder / "queries.npy").exists():
        started = time.perf_counter()
        root, queries = real_covariance()
        rng = np.random.default_rng(0)
        out = np.lib.format.open_memmap(vectors_path, "w+", np.float32, (n, root.shape[0]))
        for start in range(0, n, CHUNK):
            out[start : start + CHUNK] = synthetic_directions(rng, root, min(CHUNK, n - start))
        out.flush()
        del out
        np.save(folder / "queries.npy", queries.astype(np.float32))
        _log(f"vectors written in {time.perf_counter() - started:.0f} s")
    vectors = np.load(vectors_path, mmap_mode="r")
    queries = np.load(folder / "queries.npy")
    if not (folder / "truth.npy").exists():
        started = time.perf_counter()
        np.save(folder / "truth.npy", _exact_top(vectors, queries))
        _log(f"exact answers in {time.perf_counter() - started:.0f} s")
    d = vectors.shape[1]
    sample = np.ascontiguousarray(vectors[:: max(1, n // 256_000)][:256_000])
    for name, sub_quantizers in (("pq", d // 2), ("pq-half", d // 4)):
        if not (folder / f"{name}.faiss").exists():
            started = time.perf_counter()
            pq = faiss.IndexPQFastScan(d, sub_quantizers, 4, faiss.METRIC_INNER_PRODUCT)
            pq.train(sample[:65_536])
            _add(pq, vectors)
            faiss.write_index(pq, str(folder / f"{name}.faiss"))
            _log(f"{name} built in {time.perf_counter() - started:.0f} s")
    if not (folder / f"pq-shard-{SHARDS - 1}.faiss").exists():
        started = time.perf_counter()
        bounds = np.linspace(0, n, SHARDS + 1).astype(int)
        for shard in range(SHARDS):
            part = faiss.read_index(str(folder / "pq.faiss"))  # its trained codebooks
            part.reset()
            _add(part, vectors[bounds[shard] : bounds[shard + 1]])
            faiss.write_index(part, str(folder / f"pq-shard-{shard}.faiss"))
        _log(f"pq shards built in {time.perf_counter() - started:.0f} s")
    if not shard_files(folder / "atlas"):
        started = time.perf_counter()
        (folder / "atlas").mkdir(exist_ok=True)
        shards = IndexShards(folder / "atlas", APPROXIMATE)
        for start in range(0, n, ATLAS_LAYER):
            layer = np.ascontiguousarray(vectors[start : start + ATLAS_LAYER])
            shards.add_layer(layer, np.arange(start, start + len(layer)))
        shards.flush()
        _log(f"atlas shards built in {time.perf_counter() - started:.0f} s")
    if not (folder / "ivfpq.faiss").exists():
        started = time.perf_counter()
        coarse = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFPQFastScan(coarse, d, NLIST, d // 2, 4, faiss.METRIC_INNER_PRODUCT)
        ivf.train(sample)
        _add(ivf, vectors)
        faiss.write_index(ivf, str(folder / "ivfpq.faiss"))
        _log(f"IVF-PQ fast-scan built in {time.perf_counter() - started:.0f} s")


def _add(index: Any, vectors: np.ndarray) -> None:
    for start in range(0, len(vectors), CHUNK):
        index.add(np.ascontiguousarray(vectors[start : start + CHUNK]))


def _exact_top(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query's K largest ``|cos|`` over every vector: ids ``[n_queries, K]``."""
    best_ids = np.zeros((len(queries), 0), np.int64)
    best = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(vectors), CHUNK):
        scores = np.abs(np.asarray(vectors[start : start + CHUNK]) @ queries.T).T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        best = np.concatenate([best, np.take_along_axis(scores, top, axis=1)], axis=1)
        best_ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argsort(-best, axis=1, kind="stable")[:, :K]
        best, best_ids = np.take_along_axis(best, keep, 1), np.take_along_axis(best_ids, keep, 1)
    return best_ids


def measure(folder: Path, route: str, nprobe: int, threads: int) -> dict[str, Any]:
    """One route over the queries, in this (fresh) process."""
    import faiss

    faiss.omp_set_num_threads(threads)
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    queries = np.load(folder / "queries.npy")
    truth = np.load(folder / "truth.npy")
    started = time.perf_counter()
    if route == "exact":
        search = lambda q: _exact_top(vectors, q[None])[0]  # noqa: E731
        queries, truth = queries[:10], truth[:10]
    elif route == "pq-sharded":
        faiss.omp_set_num_threads(1)  # the shards are the parallelism
        sharded = Sharded(
            [faiss.read_index(str(folder / f"pq-shard-{s}.faiss")) for s in range(SHARDS)]
        )
        on_disk = OnDisk(folder / "vectors.npy")
        search = lambda q: _approximate_top(sharded, on_disk, q)  # noqa: E731
    elif route == "atlas":
        residual = ResidualIndex.read(shard_files(folder / "atlas"))
        search = lambda q: _atlas_top(residual, q)  # noqa: E731
    else:
        index = faiss.read_index(str(folder / f"{route}.faiss"))
        if route == "ivfpq":
            index.nprobe = nprobe
        on_disk = OnDisk(folder / "vectors.npy")
        search = lambda q: _approximate_top(index, on_disk, q)  # noqa: E731
    opened = time.perf_counter() - started
    for q in queries[:20] if route != "exact" else []:
        search(q)
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(search(q))
        times.append(time.perf_counter() - start)
    recall = np.mean(
        [len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]
    )
    ordered = sorted(times)
    return {
        "route": route,
        "nprobe": nprobe if route == "ivfpq" else None,
        "threads": threads,
        "directions": len(vectors),
        "queries": len(queries),
        "open_s": round(opened, 2),
        "p50_ms": round(ordered[len(ordered) // 2] * 1e3, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3, 2),
        "recall_at_10": round(float(recall), 3),
        **_memory(),
    }


class Sharded:
    """Shards of consecutive ids searched on a thread each (FAISS releases the GIL), as one
    index: ``search`` returns each query's candidates from every shard, in global ids."""

    def __init__(self, shards: list[Any]):
        from concurrent.futures import ThreadPoolExecutor

        self.shards = shards
        self.starts = np.cumsum([0] + [s.ntotal for s in shards[:-1]])
        self.pool = ThreadPoolExecutor(len(shards))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` best over all shards (FAISS's ``(D, I)``)."""
        found = list(self.pool.map(lambda s: s.search(queries, k), self.shards))
        sims = np.concatenate([d for d, _ in found], axis=1)
        ids = np.concatenate(
            [
                np.where(i >= 0, i + start, -1)
                for (_, i), start in zip(found, self.starts, strict=True)
            ],
            axis=1,
        )
        best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, best, 1), np.take_along_axis(ids, best, 1)


class OnDisk:
    """The vectors file, read a row at a time (``pread``): a rerank's rows come from the page
    cache or the disk without being mapped into the process, so its resident set is its own
    memory alone."""

    def __init__(self, path: Path):
        mapped = np.load(path, mmap_mode="r")  # the header only: no row is read
        self.offset, (self.n, self.d) = mapped.offset, mapped.shape
        del mapped
        self.row = 4 * self.d
        self.fd = os.open(path, os.O_RDONLY)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.d), np.float32)
        view = memoryview(out).cast("B")
        size = self.row
        for j, i in enumerate(ids.tolist()):
            os.preadv(self.fd, [view[j * size : (j + 1) * size]], self.offset + i * size)
        return out


def _approximate_top(index: Any, vectors: OnDisk, q: np.ndarray) -> np.ndarray:
    """Both valences' best ``RERANK_FACTOR x K`` candidates from the codes, re-ranked by their
    exact ``|cos|``, read from the vectors file in file order."""
    _, candidates = index.search(np.stack([q, -q]).astype(np.float32), RERANK_FACTOR * K)
    ids = np.unique(candidates[candidates >= 0])
    exact = np.abs(vectors.rows(ids) @ q)
    return ids[np.argsort(-exact, kind="stable")[:K]]


def _atlas_top(index: ResidualIndex, q: np.ndarray) -> np.ndarray:
    """Both valences' best ``K`` as the library's residual search finds them."""
    sims, ids = index.search(np.stack([q, -q]).astype(np.float32), K)
    return merge_valences(ids, sims, K)[0]


def _memory() -> dict[str, int]:
    """Peak resident set (VmHWM) and, now, its anonymous and file-backed parts, in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) // 1024
    return {"peak_rss_mb": fields["VmHWM"], "anon_mb": fields["RssAnon"],
            "file_mb": fields["RssFile"]}  # fmt: skip


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # route nprobe threads
    args = parser.parse_args()
    folder = ROOT / "data" / "bench" / ("1e7" if args.n == 10_000_000 else f"n{args.n}")
    if args.measure:
        route, nprobe, threads = args.measure
        print(json.dumps(measure(folder, route, int(nprobe), int(threads))), flush=True)
        return
    build(folder, args.n)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    runs = [("atlas", 0, 2), ("pq", 0, 1), ("pq", 0, 2), ("pq-sharded", 0, SHARDS),
            ("pq-half", 0, 2), *(("ivfpq", p, 2) for p in NPROBES), ("exact", 0, 1)]  # fmt: skip
    for route, nprobe, threads in runs:
        command = [sys.executable, __file__, "--n", str(args.n), "--measure", route,
                   str(nprobe), str(threads)]  # fmt: skip
        subprocess.run(command, check=True, env=env)


if __name__ == "__main__":
    main()
