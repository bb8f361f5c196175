"""FAISS indexes of an atlas: exact while exact is fast, PQ fast-scan with exact re-ranking above.

Every index maps FAISS ids to ``direction_id`` (``IndexIDMap``) over unit vectors with inner
product, so a score is a cosine. Both index types keep the full float32 vectors, so filtered
and threshold queries can always be answered exactly from the index itself.

Not ``IndexIDMap2``, which earlier versions wrote (and which still reads): its reverse map of
ids is rebuilt on every read and freed on every close, 25 and 15 ms a 500,000-vector shard,
a tenth of a fresh CLI search at 1e6 directions, and nothing here looks a vector up through
FAISS (:class:`ResidualIndex` keeps the ids).

A model's index is a list of shards (one per transformer block at ingest, so that building it
never needs more than one block's vectors in memory), searched together by
:class:`ResidualIndex`, so that they behave as one index: flat shards answer for their own
directions and the results are merged exactly; approximate shards pool their codes'
candidates and re-rank one budget of them (:class:`JoinedCodes`). Shards are memory-mapped
where FAISS allows: the full vectors are, the codes are read into memory.

Why not HNSW or IVF: singular directions are nearly isotropic (the participation ratio of
MiniLM's direction covariance is 353 of 384 dimensions), so a query's true neighbours sit only a
few standard deviations above the bulk, and graph and cluster indexes lose recall there (HNSW
reached recall@10 0.71 at 1e5 directions). A scan stays reliable, so the approximate index
scans 4-bit product-quantized codes with SIMD (two dimensions per sub-quantizer: 1/16 of the
float32 bytes) and re-ranks the best ``RERANK_FACTOR * k`` candidates exactly.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
# Searches of at most this many queries, of fewer vectors than the second figure, run on the
# calling thread alone (``few_queries``).
FEW_QUERIES = 4
PARALLEL_MIN_VECTORS = 65_536


def index_type_for(n_vectors: int, exact_max: int) -> str:
    """Exact up to ``exact_max`` vectors, and always below ``APPROXIMATE_MIN``: there exact search
    takes microseconds, and too few vectors cannot train the codebooks."""
    return EXACT if n_vectors <= max(exact_max, APPROXIMATE_MIN) else APPROXIMATE


def build_index(vectors: np.ndarray, ids: np.ndarray, index_type: str) -> Any:
    """A FAISS index of ``index_type`` (``models.index_type``: ``flat`` or ``pq-rerank``),
    except that a shard of fewer than ``APPROXIMATE_MIN`` vectors is always flat: too small to
    train codebooks, and fast to scan exactly."""
    import faiss

    vectors = np.ascontiguousarray(vectors, np.float32)
    d = vectors.shape[1]
    inner: Any
    if index_type != EXACT and len(vectors) >= APPROXIMATE_MIN:
        sub_quantizers = d // 2 if d % 2 == 0 else d
        coarse = faiss.IndexPQFastScan(d, sub_quantizers, 4, faiss.METRIC_INNER_PRODUCT)
        step = max(1, len(vectors) // PQ_TRAIN_MAX)
        coarse.train(vectors[::step])
        inner = faiss.IndexRefineFlat(coarse)
        inner.k_factor = RERANK_FACTOR
    else:
        inner = faiss.IndexFlatIP(d)
    index = faiss.IndexIDMap(inner)
    index.add_with_ids(vectors, ids.astype(np.int64))
    return index


SHARD_FILE = "residual-{:04d}.faiss"


def shard_files(store: Path) -> list[Path]:
    """A store's index shards in order (empty when the model has no vectors)."""
    return sorted(store.glob("residual-*.faiss"))


def is_index_file(name: str) -> bool:
    return name.startswith("residual-") and name.endswith(".faiss")


def write_index(index: Any, path: Path) -> None:
    import faiss

    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:  # faiss reports a failed write (e.g. a full disk) this way
        raise OSError(f"could not write {path}: {one_line(exc, 200)}") from None


class UnreadableShard(AtlasError):
    """A shard file FAISS cannot read, or not of the kind svd-atlas writes; ``why`` says which
    without the file's path, for callers that name the file their own way."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} {why}; a repair (`check` with `repair`) rebuilds it")
        self.why = why


def read_index(path: Path) -> Any:
    """One shard, memory-mapped where FAISS allows (flat codes), checked to be a kind
    svd-atlas writes: an id map over a flat index, or over PQ codes with their full vectors,
    every part scoring by inner product (a cosine, for unit vectors)."""
    import faiss

    try:
        index: Any = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as exc:
        raise UnreadableShard(path, f"cannot be read ({faiss_reason(exc)})") from None
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if not isinstance(index, faiss.IndexIDMap) or not isinstance(
        inner, faiss.IndexFlat | faiss.IndexRefineFlat
    ):
        kind = type(inner).__name__ if inner is not index else type(index).__name__
        raise UnreadableShard(path, f"holds {kind}, not an index type svd-atlas writes")
    parts: list[Any] = [index, inner]
    if isinstance(inner, faiss.IndexRefineFlat):
        parts += [faiss.downcast_index(inner.base_index), faiss.downcast_index(inner.refine_index)]
    if any(int(part.metric_type) != faiss.METRIC_INNER_PRODUCT for part in parts):
        raise UnreadableShard(path, "does not score by inner product (its metric was changed)")
    return index


def faiss_reason(exc: BaseException) -> str:
    """FAISS's own words from one of its errors, without the C++ signature and source path
    it puts before them."""
    text = one_line(exc, 2000)
    if text.startswith("Error in "):  # "Error in <signature> at <file>:<line>: <reason>"
        text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    return text[:120]


def is_exact(index: Any) -> bool:
    """Whether a shard (or every shard of a :class:`ResidualIndex`) is exact."""
    if isinstance(index, ResidualIndex):
        return index.exact
    import faiss

    return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)


def full_vectors(index: Any) -> Any:
    """The flat inner-product index of the full vectors inside a shard of either type, in FAISS
    positions (``index_ids(index)[position]`` is the direction id): exact range searches."""
    import faiss

    inner: Any = faiss.downcast_index(index.index)
    return inner if is_exact(index) else faiss.downcast_index(inner.refine_index)


def _file_signature(path: Path) -> tuple[int, int, int, int]:
    status = path.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


class FileStamps:
    """Files as they were when read (inode, size and times, a stat each): whether they are
    still those files, so that what was found of them still holds."""

    def __init__(self, paths: list[Path]):
        self._stamps = {path: _file_signature(path) for path in paths}

    def unchanged(self) -> bool:
        try:
            return all(_file_signature(p) == known for p, known in self._stamps.items())
        except OSError:
            return False


def _flat_view(flat: Any) -> np.ndarray:
    """A flat index's vectors, ``[ntotal, d]`` float32, as a read-only view of FAISS's own
    memory."""
    import faiss

    n, d = int(flat.ntotal), int(flat.d)
    if n == 0:
        return np.zeros((0, d), np.float32)
    view = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
    view.flags.writeable = False
    return view


def index_ids(index: Any) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)


class ResidualIndex:
    """One model's index: its shards searched as one (see the module notes).

    ``search`` and ``reconstruct_batch`` have FAISS's signatures, so code written for a FAISS
    index works on it; results are merged across shards exactly.
    """

    def __init__(self, shards: list[Any], files: list[Path] | None = None):
        if not shards:
            raise ValueError("an index needs at least one shard")
        self.shards = shards
        self.files = FileStamps(files or [])  # the files the shards map, as they were read
        self.d = int(shards[0].d)
        self._ids = [index_ids(s) for s in shards]
        every = self._every = np.concatenate(self._ids)
        self._starts = np.cumsum([0] + [len(i) for i in self._ids[:-1]])  # shards' first rows
        # each shard's full vectors as numpy sees them, without a copy: they live as long as
        # the shards this object holds, and only copies of their rows are handed out
        self._vectors = [_flat_view(full_vectors(s)) for s in shards]
        approximate = [n for n, s in enumerate(shards) if not is_exact(s)]
        self._flat_shards = [n for n in range(len(shards)) if n not in approximate]
        self._codes = None
        if approximate:
            ids = every if not self._flat_shards else np.hstack([self._ids[n] for n in approximate])
            self._codes = JoinedCodes([shards[n] for n in approximate], ids)

    @classmethod
    def read(cls, paths: list[Path]) -> ResidualIndex:
        return cls([read_index(p) for p in paths], paths)

    def files_unchanged(self) -> bool:
        """Whether every file the shards map is still the one read (see :class:`FileStamps`),
        so that what was checked of the index still holds."""
        return self.files.unchanged()

    @functools.cached_property
    def _by_id(self) -> tuple[np.ndarray | None, np.ndarray]:
        """``(order, sorted ids)``: ``order[j]`` is the position (the shards' rows laid end to
        end) of the j-th smallest id, None where the rows are in id order already. Sorted on
        first use (a lookup of vectors by id): a search needs none of it, and a fresh process
        saves the sort (10-16 ms at 1e6, where each shard holds whole layers, whose ids lie in
        one range per kind)."""
        every = self._every
        order = None if bool(np.all(every[1:] > every[:-1])) else np.argsort(every, kind="stable")
        return order, every if order is None else every[order]

    @property
    def ntotal(self) -> int:
        return len(self._every)

    @property
    def exact(self) -> bool:
        return all(is_exact(s) for s in self.shards)

    def ids(self) -> np.ndarray:
        """Every direction id the index holds, ascending."""
        return self._by_id[1]

    def held_ids(self) -> np.ndarray:
        """Every direction id the index holds, in the shards' order (no sort)."""
        return self._every

    def search(self, queries: np.ndarray, k: int, exact: bool = False) -> tuple[Any, Any]:
        """The ``k`` largest inner products of each query over all shards: ``(D, I)`` as FAISS
        returns them (``I`` = direction ids, -1 where fewer exist). ``exact`` scans the full
        vectors even in approximate shards, which are otherwise searched together
        (:class:`JoinedCodes`)."""
        queries = np.ascontiguousarray(queries, np.float32)
        sims, ids = [], []
        flat_shards = range(len(self.shards)) if exact else self._flat_shards
        with few_queries(len(queries), self.ntotal):
            for n in flat_shards:
                d, i = full_vectors(self.shards[n]).search(queries, min(k, len(self._ids[n])))
                sims.append(d)
                ids.append(np.where(i >= 0, self._ids[n][np.maximum(i, 0)], -1))
            if not exact and self._codes is not None:
                d, i = self._codes.search(queries, k)
                sims.append(d)
                ids.append(i)
        return _top_k(np.hstack(sims), np.hstack(ids), k)

    def search_among(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[Any, Any]:
        """:meth:`search` restricted to the ``allowed`` direction ids, exactly."""
        import faiss

        queries = np.ascontiguousarray(queries, np.float32)
        allowed = np.asarray(allowed, np.int64)
        sims, ids = [], []
        for shard, shard_ids in zip(self.shards, self._ids, strict=True):
            mine = allowed[np.isin(allowed, shard_ids)]
            if len(mine) == 0:
                continue
            if is_exact(shard):
                params = faiss.SearchParameters()
                selector = faiss.IDSelectorBatch(mine)
                params.sel = selector  # keep ``selector`` alive while FAISS uses it
                with few_queries(len(queries), len(mine)):
                    d, i = shard.search(queries, min(k, len(mine)), params=params)
            else:  # approximate shards and selective filters do not mix: scan the subset
                scores = queries @ self.reconstruct_batch(mine).T
                top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
                d, i = np.take_along_axis(scores, top, axis=1), mine[top]
            sims.append(d)
            ids.append(i)
        if not sims:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return _top_k(np.concatenate(sims, axis=1), np.concatenate(ids, axis=1), k)

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (direction ids), ``[len(ids), d]``."""
        ids = np.asarray(ids, np.int64)
        out = np.zeros((len(ids), self.d), np.float32)
        if len(ids) == 0:
            return out
        order, ordered = self._by_id
        at = np.searchsorted(ordered, ids)
        if np.any(at >= len(ordered)) or np.any(ordered[np.minimum(at, len(ordered) - 1)] != ids):
            raise KeyError("a direction id is not in the index")
        rows = at if order is None else order[at]
        owners = np.searchsorted(self._starts, rows, side="right") - 1
        offsets = rows - self._starts[owners]
        for shard_no in np.unique(owners):
            mine = owners == shard_no
            out[mine] = self._vectors[shard_no][offsets[mine]]
        return out

    def abs_range_search(self, query: np.ndarray, threshold: float) -> tuple[Any, Any]:
        """Every (direction id, inner product) with ``|inner product| >= threshold``, exactly,
        over the full vectors: one pass computes every product (FAISS's SIMD kernel, into one
        array) and both valences are kept here. FAISS's range search keeps one sign, so it
        would take two passes (``q`` and ``-q``), or one that collects every product as a
        result (at 1e6 directions, two shards on two threads: 28-30 ms against 40-43 for
        that, side by side)."""
        import faiss

        q = np.ascontiguousarray(query, np.float32).reshape(-1)
        if q.size != self.d:  # FAISS reads d floats from the query, whatever its length
            raise ValueError(f"a query of width {q.size} for an index of width {self.d}")

        def scan(n: int) -> tuple[np.ndarray, np.ndarray]:
            flat = full_vectors(self.shards[n])
            products = np.empty(flat.ntotal, np.float32)
            if flat.ntotal:
                faiss.fvec_inner_products_ny(  # type: ignore[attr-defined]  # not in its stubs
                    faiss.swig_ptr(products), faiss.swig_ptr(q), flat.get_xb(), self.d, flat.ntotal
                )
            positions = np.flatnonzero(np.abs(products) >= threshold)
            return self._ids[n][positions], products[positions]

        # the shards on threads of their own: one thread reads memory at a fraction of the
        # machine's bandwidth (at 1e6 directions, two shards: 31 against 57 ms in turn)
        shards = range(len(self.shards))
        found = list(_scan_pool().map(scan, shards)) if len(shards) > 1 else [scan(0)]
        return np.concatenate([i for i, _ in found]), np.concatenate([s for _, s in found])


class JoinedCodes:
    """Approximate shards searched as one index: FAISS's ``IndexShards`` over their codes
    gives the best ``RERANK_FACTOR * k`` candidates of all of them (merged in C++), and only
    those are re-ranked from the shards' full vectors, in place (memory-mapped). Each shard's
    own rerank (``IndexRefineFlat``) would re-rank that many per shard: 51 times the rows at
    1e7 directions of width 384, in 51 shards of 256 MB.

    A candidate is a *position*: a row of the shards laid end to end (shard ``s`` holds
    ``starts[s]`` to ``starts[s] + ntotal - 1``).
    """

    def __init__(self, shards: list[Any], ids: np.ndarray):
        """``ids``: the shards' direction ids laid end to end (by position)."""
        import faiss

        self.d = int(shards[0].d)
        # FAISS's defaults: the shards searched in turn, their ids laid end to end; each
        # shard's codes are its PQ fast-scan index (``IndexRefineFlat.base_index``), owned by
        # the shard, which the ResidualIndex that holds this keeps open
        self._joined = faiss.IndexShards(self.d)
        for shard in shards:
            refined: Any = faiss.downcast_index(shard.index)
            self._joined.add_shard(faiss.downcast_index(refined.base_index))
        self._flats = [full_vectors(s) for s in shards]
        self._starts = np.cumsum([0] + [f.ntotal for f in self._flats[:-1]])
        self._ids = ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of each query by exact inner product among its candidates:
        ``(D, I)`` with direction ids, unsorted."""
        queries = np.ascontiguousarray(queries, np.float32)  # FAISS reads its memory as is
        budget = min(RERANK_FACTOR * k, len(self._ids))
        _, positions = self._joined.search(queries, budget)
        sims = self._inner_products(queries, positions)
        return sims, np.where(positions >= 0, self._ids[np.maximum(positions, 0)], -1)

    def _inner_products(self, queries: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """``queries[r] . vector(positions[r, c])``, by FAISS from each shard's full vectors
        where they lie; -inf where the position is -1."""
        import faiss

        out = np.full(positions.shape, -np.inf, np.float32)
        shard_of = np.searchsorted(self._starts, positions, side="right") - 1  # -1 for -1
        part = np.empty_like(out)
        for n in np.flatnonzero(np.bincount(shard_of.ravel() + 1)[1:]):
            start, flat = self._starts[n], self._flats[n]
            local = np.where(shard_of == n, positions - start, -1)
            faiss.fvec_inner_products_by_idx(  # type: ignore[attr-defined]  # not in its stubs
                faiss.swig_ptr(part), faiss.swig_ptr(queries), flat.get_xb(),
                faiss.swig_ptr(local), self.d, *positions.shape,
            )  # fmt: skip
            np.maximum(out, part, out=out)  # -inf where the position is another shard's
        return out


_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the process it belongs to, the pool)
_pool_lock = threading.Lock()


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system has one (a
    container or ``taskset`` may grant fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _scan_pool() -> ThreadPoolExecutor:
    """The process's threads for scanning shards side by side, one per core; made again in
    a forked child, where the parent's threads do not exist."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            pool = ThreadPoolExecutor(usable_cores(), thread_name_prefix="svd-atlas-scan")
            _pool = (os.getpid(), pool)
        return _pool[1]


@contextlib.contextmanager
def few_queries(n_queries: int, n_vectors: int) -> Iterator[None]:
    """Run the block's FAISS calls on the calling thread alone when they search few queries
    over few vectors.

    FAISS spreads a search over OpenMP threads by query. Over a small index the scan is shorter
    than waking the threads (they have gone to sleep since the last search): on a busy machine
    10-25 ms against 1 ms measured at 1e3 directions. Over a large one a search's two valences
    on two threads are the faster (at 1e6 directions, quiet: 1.9 against 3.0 ms; at 1e5, 1.9
    against 2.7). OpenMP keeps the setting per thread, so a server's other threads and larger
    batches keep their parallelism; a server sets the threads of each of its searches by how
    many requests it is answering (:func:`search_threads`).
    """
    import faiss

    if n_queries > FEW_QUERIES or n_vectors >= PARALLEL_MIN_VECTORS:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def search_threads(n: int) -> None:
    """FAISS calls of the calling thread use ``n`` threads (OpenMP's setting is per thread).
    A server sets it per request (``atlas.server.work``): every core for a request alone, one
    thread each for requests side by side, which use the cores between them, and where a
    search that woke more threads would only queue them behind each other."""
    import faiss

    faiss.omp_set_num_threads(n)


def _top_k(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[Any, Any]:
    """Per row, the ``k`` largest similarities (ties by id), padded with -1 ids."""
    sims = np.where(ids >= 0, sims, -np.inf)
    if sims.shape[1] > 2 * k:  # sort only each row's k best, unless a tie crosses the k-th
        keep = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        kept = np.take_along_axis(sims, keep, axis=1)
        if np.all(np.sum(sims >= kept.min(axis=1, keepdims=True), axis=1) == k):
            sims, ids = kept, np.take_along_axis(ids, keep, axis=1)
    order = np.lexsort((ids, -sims), axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    top_ids = np.where(np.isfinite(top_sims), top_ids, -1)
    if top_ids.shape[1] < k:
        pad = k - top_ids.shape[1]
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
        top_sims = np.pad(top_sims, ((0, 0), (0, pad)), constant_values=-np.inf)
    return top_sims.astype(np.float32), top_ids


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
    """recall@k of ``index`` (a shard or a :class:`ResidualIndex`) against an exact scan of its
    own full vectors, with ``n_queries`` of its own directions as "more like this" queries
    (both valences; self-matches dropped)."""
    index = index if isinstance(index, ResidualIndex) else ResidualIndex([index])
    ids = index.ids()
    picks = ids[
        np.random.default_rng(seed).choice(len(ids), min(n_queries, len(ids)), replace=False)
    ]
    queries = index.reconstruct_batch(picks)
    both = np.concatenate([queries, -queries])
    exact_sims, exact_ids = index.search(both, k + 1, exact=True)
    approx_sims, approx_ids = index.search(both, k + 1)
    found = []
    for row, own in enumerate(picks):
        pair = [row, row + len(picks)]
        truth, _ = merge_valences(exact_ids[pair], exact_sims[pair], k + 1)
        got, _ = merge_valences(approx_ids[pair], approx_sims[pair], k + 1)
        truth, got = truth[truth != own][:k], got[got != own][:k]
        found.append(len(np.intersect1d(truth, got)) / max(len(truth), 1))
    return float(np.mean(found))
