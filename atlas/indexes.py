"""FAISS indexes of an atlas: exact while exact is fast, HNSW above a size threshold.

Every index maps FAISS ids to ``direction_id`` (``IndexIDMap2``) over unit vectors with inner
product, so a score is a cosine. Both index types keep the full vectors, so filtered and
threshold queries can always be answered exactly from the index itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Above this many vectors an index is built as HNSW (configurable per ingest: --exact-max).
DEFAULT_EXACT_MAX = 200_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128


def build_index(vectors: np.ndarray, ids: np.ndarray, exact_max: int = DEFAULT_EXACT_MAX) -> Any:
    import faiss

    d = vectors.shape[1]
    inner: Any
    if len(vectors) > exact_max:
        inner = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        inner = faiss.IndexFlatIP(d)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
    return index


def write_index(index: Any, path: Path) -> None:
    import faiss

    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:  # faiss reports a failed write (e.g. a full disk) this way
        raise OSError(f"could not write {path}: {' '.join(str(exc).split())[:200]}") from None


def read_index(path: Path) -> Any:
    import faiss

    index: Any = faiss.read_index(str(path))
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSWFlat):
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def is_exact(index: Any) -> bool:
    import faiss

    return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)


def index_ids(index: Any) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.id_map).astype(np.int64)


def reconstruct(index: Any, ids: np.ndarray) -> np.ndarray:
    """The stored vectors of ``ids`` (direction ids), ``[len(ids), d]``."""
    if len(ids) == 0:
        return np.zeros((0, index.d), np.float32)
    return index.reconstruct_batch(np.asarray(ids, np.int64))
