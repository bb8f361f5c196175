"""FAISS indexes of an atlas: exact while exact is fast, PQ fast-scan with exact re-ranking above.

Every index maps FAISS ids to ``direction_id`` (``IndexIDMap2``) over unit vectors with inner
product, so a score is a cosine. Both index types keep the full float32 vectors, so filtered and
threshold queries can always be answered exactly from the index itself.

Why not HNSW or IVF: singular directions are nearly isotropic (the participation ratio of
MiniLM's direction covariance is 353 of 384 dimensions), so a query's true neighbours sit only a
few standard deviations above the bulk, and graph and cluster indexes lose recall there (HNSW
reached recall@10 0.71 at 1e5 directions). A scan stays reliable, so the approximate index
scans 4-bit product-quantized codes with SIMD (two dimensions per sub-quantizer: 1/16 of the
float32 bytes) and re-ranks the best ``RERANK_FACTOR * k`` candidates exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from atlas.core.errors import AtlasError, one_line

# Above this many vectors an index is approximate (configurable per ingest: --exact-max).
DEFAULT_EXACT_MAX = 200_000
EXACT, APPROXIMATE = "flat", "pq-rerank"  # the values of models.index_type
APPROXIMATE_MIN = 1024
RERANK_FACTOR = 50  # candidates re-ranked exactly per result asked for
PQ_TRAIN_MAX = 100_000  # a deterministic sample is enough to train 16 centroids per sub-space


def index_type_for(n_vectors: int, exact_max: int) -> str:
    """Exact up to ``exact_max`` vectors, and always below ``APPROXIMATE_MIN``: there exact search
    takes microseconds, and too few vectors cannot train the codebooks."""
    return EXACT if n_vectors <= max(exact_max, APPROXIMATE_MIN) else APPROXIMATE


def build_index(vectors: np.ndarray, ids: np.ndarray, index_type: str) -> Any:
    """An index of ``index_type`` (``models.index_type``); any type but ``flat`` is built
    approximate, so models the first release indexed with HNSW are rebuilt as today's."""
    import faiss

    vectors = np.ascontiguousarray(vectors, np.float32)
    d = vectors.shape[1]
    inner: Any
    if index_type != EXACT:
        sub_quantizers = d // 2 if d % 2 == 0 else d
        coarse = faiss.IndexPQFastScan(d, sub_quantizers, 4, faiss.METRIC_INNER_PRODUCT)
        step = max(1, len(vectors) // PQ_TRAIN_MAX)
        coarse.train(vectors[::step])
        inner = faiss.IndexRefineFlat(coarse)
        inner.k_factor = RERANK_FACTOR
    else:
        inner = faiss.IndexFlatIP(d)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, ids.astype(np.int64))
    return index


def write_index(index: Any, path: Path) -> None:
    import faiss

    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:  # faiss reports a failed write (e.g. a full disk) this way
        raise OSError(f"could not write {path}: {one_line(exc, 200)}") from None


def read_index(path: Path) -> Any:
    import faiss

    index: Any = faiss.read_index(str(path))
    inner = faiss.downcast_index(index.index)
    if not isinstance(inner, faiss.IndexFlat | faiss.IndexRefineFlat):
        raise AtlasError(
            f"{path}: {type(inner).__name__} is an index type this version of svd-atlas does not "
            "use (HNSW came from an earlier one); svd-atlas check --repair rebuilds it"
        )
    return index


def is_exact(index: Any) -> bool:
    import faiss

    return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)


def full_vectors(index: Any) -> Any:
    """The flat inner-product index of the full vectors inside either index type, in FAISS
    positions (``index_ids(index)[position]`` is the direction id): exact range searches."""
    import faiss

    inner: Any = faiss.downcast_index(index.index)
    return inner if is_exact(index) else faiss.downcast_index(inner.refine_index)


def index_ids(index: Any) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.id_map).astype(np.int64)


def reconstruct(index: Any, ids: np.ndarray) -> np.ndarray:
    """The stored vectors of ``ids`` (direction ids), ``[len(ids), d]``."""
    if len(ids) == 0:
        return np.zeros((0, index.d), np.float32)
    return index.reconstruct_batch(np.asarray(ids, np.int64))


def merge_valences(ids: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row 0 searched q, row 1 searched -q: a direction found by -q has cosine -sim with q."""
    all_ids = np.concatenate([ids[0], ids[1]])
    all_sims = np.concatenate([sims[0], -sims[1]])
    keep = all_ids >= 0
    all_ids, all_sims = all_ids[keep], all_sims[keep]
    order = np.lexsort((all_ids, -np.abs(all_sims)))
    _, first = np.unique(all_ids[order], return_index=True)
    chosen = order[np.sort(first)][:k]
    return all_ids[chosen], all_sims[chosen]


def measured_recall(index: Any, k: int = 10, n_queries: int = 100, seed: int = 0) -> float:
    """recall@k of ``index`` against an exact scan of its own full vectors, with ``n_queries``
    of its own directions as "more like this" queries (both valences; self-matches dropped)."""
    flat, ids = full_vectors(index), index_ids(index)
    picks = np.random.default_rng(seed).choice(len(ids), min(n_queries, len(ids)), replace=False)
    queries = flat.reconstruct_batch(picks.astype(np.int64))
    exact_sims, exact_pos = flat.search(np.concatenate([queries, -queries]), k + 1)
    approx_sims, approx_ids = index.search(np.concatenate([queries, -queries]), k + 1)
    found = []
    for row, position in enumerate(picks):
        both = [row, row + len(picks)]
        truth, _ = merge_valences(ids[exact_pos[both]], exact_sims[both], k + 1)
        got, _ = merge_valences(approx_ids[both], approx_sims[both], k + 1)
        truth, got = truth[truth != ids[position]][:k], got[got != ids[position]][:k]
        found.append(len(np.intersect1d(truth, got)) / max(len(truth), 1))
    return float(np.mean(found))
