"""Bundle sizes per vector mode and the search recall of half-precision vectors.

    python bench/bundle_report.py [--atlas DIR] [--model minilm] [--queries 1000]

Exports the model's atlas as bundles with f32, f16 and no vectors, times export and load, and
measures recall@10 of exact inner-product search over the loaded f16 vectors against the f32
ones. Queries: the model's own directions (a "direction
query") and random unit vectors. Without --atlas, MiniLM is ingested into a temporary atlas.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atlas  # noqa: E402
from atlas.api import Atlas  # noqa: E402
from atlas.cli.output import human_bytes  # noqa: E402
from atlas.core.vectors import vector_matrix  # noqa: E402

MODES = ("f32", "f16", "none")


def vectors(a: Atlas, model_id: str) -> np.ndarray:
    t = a.sql("SELECT vector FROM directions WHERE model_id = ? ORDER BY direction_id", [model_id])
    return vector_matrix(t["vector"])


def recall(a: Atlas, b: Atlas, model_id: str, queries: np.ndarray, k: int = 10) -> float:
    _, truth = a.residual_index(model_id).search(queries, k)
    _, found = b.residual_index(model_id).search(queries, k)
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", type=Path)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="svd-atlas-bundle-report-"))
    root = args.atlas
    if root is None:
        root = work / "atlas"
        atlas.ingest(root, args.model, device="cpu")

    rows, loaded = [], {}
    with atlas.open(root) as source:
        store = next(m["size_bytes"] for m in source.models() if m["model_id"] == args.model)
        for mode in MODES:
            out = work / f"{mode}.bundle"
            start = time.perf_counter()
            source.export(out, [args.model], mode)
            exported = time.perf_counter() - start
            start = time.perf_counter()
            atlas.load(work / f"loaded-{out.stem}", out)
            load_s = time.perf_counter() - start
            loaded[mode] = work / f"loaded-{out.stem}"
            rows.append((mode, out.stat().st_size, exported, load_s))

        rng = np.random.default_rng(0)
        own = vectors(source, args.model)
        picks = own[rng.choice(len(own), min(args.queries, len(own)), replace=False)]
        rand = rng.standard_normal((args.queries, own.shape[1])).astype(np.float32)
        rand /= np.linalg.norm(rand, axis=1, keepdims=True)
        with atlas.open(loaded["f32"]) as f32, atlas.open(loaded["f16"]) as f16:
            r_own = recall(f32, f16, args.model, np.ascontiguousarray(picks, dtype=np.float32))
            r_rand = recall(f32, f16, args.model, rand)
            err = np.abs(vectors(f16, args.model) - vectors(f32, args.model)).max()

    print(
        f"model {args.model}: {len(own):,} directions x {own.shape[1]}; store {human_bytes(store)}"
    )
    print("\n| bundle | size | export (s) | load (s) |\n|---|---|---|---|")
    for label, size, exported, load_s in rows:
        print(f"| {label} | {human_bytes(size)} ({size:,} B) | {exported:.2f} | {load_s:.2f} |")
    print(f"\nrecall@10 of f16 vs f32, exact inner product, {args.queries} queries each:")
    print(f"  own directions as queries: {r_own:.4f}")
    print(f"  random unit vectors:       {r_rand:.4f}")
    print(f"  largest |f16 - f32| vector component after widening: {err:.2e}")


if __name__ == "__main__":
    main()
