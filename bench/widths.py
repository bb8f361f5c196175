"""How the approximate index's search time at 1e6 directions grows with the model's width.

    python bench/widths.py                     # widths 128, 256, 384, 512, 768
    python bench/widths.py --widths 256 1024 --n 500000

Issue 25's 10 ms target is measured on ``bench/million.py``'s atlas, of width 128. The codes
a search scans are ``d / 4`` bytes a direction (4-bit PQ, two dimensions per sub-quantizer:
``atlas.core.indexes.build_index``), so a wider model's 1e6 directions scan more: 32 MB at
width 128, 192 MB at width 768. This measures that scan as the atlas runs it: two shards of
half the directions each, built by ``build_index`` as an ingest builds them, searched as one
by ``JoinedCodes`` (the codes in memory, one candidate budget re-ranked exactly), both
valences in one call, k = 11, over 100 queries after 10 warm-up ones. Recall@10 is against the
exact top 10 by |cos| of 30 of the queries.

The vectors are isotropic Gaussian directions (the atlas's real directions are nearly so: a
participation ratio of 329 of 384 for MiniLM's), and the queries are stored directions, as a
"more like this" search or a trace asks. Single runs; the hits are not described (that adds
the same ~0.5 ms at any width, ``bench/search_path.py``).
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np


def measure(width: int, n: int, n_queries: int = 100) -> dict[str, float]:
    from atlas.core.indexes import APPROXIMATE, JoinedCodes, build_index

    rng = np.random.default_rng(width)
    vectors = rng.standard_normal((n, width), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    half = n // 2
    shards = [
        build_index(vectors[:half], np.arange(half), APPROXIMATE),
        build_index(vectors[half:], np.arange(half, n), APPROXIMATE),
    ]
    index = JoinedCodes(shards, np.arange(n))
    queries = vectors[rng.choice(n, n_queries + 10, replace=False)]
    for q in queries[:10]:  # warm-up
        index.search(np.stack([q, -q]), 11)
    times = []
    for q in queries[10:]:
        start = time.perf_counter()
        index.search(np.stack([q, -q]), 11)
        times.append(time.perf_counter() - start)
    recalls = []
    for q in queries[10:40]:
        cos = np.abs(vectors @ q)
        truth = set(np.argpartition(-cos, 11)[:11].tolist()) - {int(np.argmax(cos))}
        _, found = index.search(np.stack([q, -q]), 11)
        recalls.append(len(truth & set(found.ravel().tolist())) / 10)
    return {
        "width": width,
        "codes_mb": round(n * width / 4 / 1e6, 1),
        "p50_ms": round(float(np.median(times)) * 1e3, 2),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 2),
        "recall_at_10": round(float(np.mean(recalls)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256, 384, 512, 768])
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    print("width  codes MB  p50 ms  p99 ms  recall@10")
    for width in args.widths:
        row = measure(width, args.n)
        print(f"{row['width']:>5}  {row['codes_mb']:>8}  {row['p50_ms']:>6}  "
              f"{row['p99_ms']:>6}  {row['recall_at_10']:>9}", flush=True)  # fmt: skip
        gc.collect()


if __name__ == "__main__":
    main()
