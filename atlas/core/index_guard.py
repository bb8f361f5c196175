"""Refusing a damaged FAISS index when it is used, and scoring hits from the stored vectors.

``check`` verifies an index in full (checksums, every vector); a search cannot afford that, so
an index is checked in two cheap steps whenever one is used:

- before FAISS reads a shard, its files must be the ones the store's manifest lists, with the
  manifest's sizes (a truncated file or another model's index is refused here, never parsed);
- once read, its width must be the model's ``d_model``, its count the model's number of
  directions and its ids exactly the catalog's id range (a damaged header or id map).

Corrupt bytes inside a structurally valid index are caught as the index answers: the scores of
the hits it returns are recomputed from the vectors DuckDB stores (k vectors per search), and an
index whose scores disagree with them is refused. Every score shown is therefore a cosine of two
stored vectors, in [-1, 1] by construction.

An index a long-running process keeps (``Atlas.load_indexes``, the server) is instead compared
with the store in full once, when it is read (``vectors_problem``: every vector equal to
DuckDB's, about 1.3 s at 1e6 directions); while its files stay the ones read (a stat each per
search: ``ResidualIndex.files_unchanged``), its vectors are the stored ones, and the hits'
vectors are read from it in microseconds instead of a DuckDB statement of milliseconds. Once a
file changes, searches check each hit against DuckDB again, as for any other index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atlas.core.errors import DamagedIndex, one_line
from atlas.core.indexes import (
    ResidualIndex,
    UnreadableShard,
    full_vectors,
    is_index_file,
    read_index,
)
from atlas.core.layout import manifest_sizes

REPAIR = "a repair (`check` with `repair`) rebuilds it"
# An index's inner products against the stored vectors' cosines: float32 rounding of unit
# vectors is about 1e-6, so anything beyond this is damage, not arithmetic.
SCORE_TOLERANCE = 1e-3


def damaged_index(model_id: str, why: str) -> DamagedIndex:
    return DamagedIndex(f"model {model_id!r}: its FAISS index {why}; {REPAIR}")


@dataclass(frozen=True)
class IndexContract:
    """What a model's index must agree with: its store's manifest and its catalog entry."""

    model_id: str
    d_model: int
    first_direction_id: int
    n_directions: int
    sizes: dict[str, int] | None  # index file -> bytes, from the manifest (None: unreadable)

    @classmethod
    def of_store(
        cls, model_id: str, store: Path, d_model: int, first_direction_id: int, n_directions: int
    ) -> IndexContract:
        sizes = manifest_sizes(store, is_index_file)
        return cls(model_id, d_model, first_direction_id, n_directions, sizes)


def file_problem(paths: list[Path], contract: IndexContract) -> str | None:
    """Why the index files disagree with the manifest (names and sizes), or None: a stat each."""
    if contract.sizes is None:
        return None
    names = sorted(p.name for p in paths)
    if names != sorted(contract.sizes):
        manifest = ", ".join(sorted(contract.sizes)) or "none"
        return f"files are {', '.join(names) or 'missing'}; its manifest lists {manifest}"
    for path in paths:
        size = path.stat().st_size
        listed = contract.sizes[path.name]
        if size != listed:
            return f"file {path.name} has {size:,} bytes; its manifest says {listed:,}"
    return None


def read_checked(paths: list[Path], contract: IndexContract) -> ResidualIndex:
    """The model's shards, read only if their files match the manifest and kept only if they
    hold exactly the model's directions (see the module notes)."""
    problem = file_problem(paths, contract)
    if problem:
        raise damaged_index(contract.model_id, problem)
    shards = []
    for path in paths:
        try:
            shards.append(read_index(path))
        except UnreadableShard as exc:
            raise damaged_index(contract.model_id, f"file {path.name} {exc.why}") from None
        except Exception as exc:  # faiss raises worse than RuntimeError for some headers
            raise damaged_index(
                contract.model_id, f"file {path.name} cannot be read ({one_line(exc, 120)})"
            ) from None
    problem = _structure_problem(shards, contract)
    if problem:
        raise damaged_index(contract.model_id, problem)
    index = ResidualIndex(shards, paths)
    problem = _ids_problem(index.held_ids(), contract)
    if problem:
        raise damaged_index(contract.model_id, problem)
    return index


def _structure_problem(shards: list[Any], contract: IndexContract) -> str | None:
    n = 0
    for shard in shards:  # each an id map of a kind svd-atlas writes (``read_index``)
        vectors = full_vectors(shard)
        d = contract.d_model
        widths = {int(shard.d), int(vectors.d)}
        if widths != {d}:
            return f"has width {max(widths - {d})}; the model's d_model is {d}"
        if not int(shard.ntotal) == int(vectors.ntotal) == int(shard.id_map.size()):
            return "has a vector count that disagrees with its id map"
        n += int(shard.ntotal)
    if n != contract.n_directions:
        return f"holds {n:,} vectors; the model has {contract.n_directions:,} directions"
    return None


def _ids_problem(ids: np.ndarray, contract: IndexContract) -> str | None:
    """``ids`` (in the shards' order, as many as the model's directions) must be exactly the
    model's range: n integers from ``first`` to ``first + n - 1``, none twice, are that range
    (checked in one pass, without sorting them: a fresh search at 1e6 saves the sort)."""
    if not len(ids):
        return None
    first, n = contract.first_direction_id, len(ids)
    offsets = ids - first
    if offsets.min() < 0 or offsets.max() >= n:
        return (
            f"holds ids {int(ids.min())}..{int(ids.max())}, not exactly the model's "
            f"{first}..{first + contract.n_directions - 1}"
        )
    seen = np.zeros(n, bool)
    seen[offsets] = True
    if not seen.all():  # n ids within n places, one missing: another is there twice
        return f"holds an id twice and lacks direction {first + int(np.argmin(seen))}"
    return None


def vectors_problem(
    index: ResidualIndex, stored: Iterable[tuple[np.ndarray, np.ndarray]]
) -> str | None:
    """Why the index's vectors are not exactly the ``stored`` ones (chunks of direction ids and
    their vectors, as DuckDB holds them, in any order), or None: every stored vector read and
    compared, for an index a process keeps and then reads its vectors from."""
    compared = np.zeros(index.ntotal, bool)
    for ids, vectors in stored:
        if len(ids) == 0:
            continue
        try:
            held = index.reconstruct_batch(ids)
        except KeyError:
            return "lacks a direction of the model's directions table"
        differ = int(np.sum(np.any(held != vectors, axis=1)))  # NaN differs from itself too
        if differ:
            return f"holds {differ:,} vectors that differ from the stored ones"
        compared[np.searchsorted(index.ids(), ids)] = True
    if not compared.all():
        return f"holds {int(np.sum(~compared)):,} vectors the directions table does not have"
    return None


def exact_cosines(
    model_id: str, query: np.ndarray, stored: np.ndarray, index_scores: np.ndarray
) -> np.ndarray:
    """The cosines of ``query`` with the ``stored`` vectors (rows, as DuckDB holds them),
    checked against what the index said for the same directions (``index_scores``, signed).

    A disagreement means the index's bytes are not the stored vectors: the index is refused.
    """
    q = np.asarray(query, np.float64)
    v = np.asarray(stored, np.float64)
    norms = np.linalg.norm(v, axis=1) * np.linalg.norm(q)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise DamagedIndex(
            f"model {model_id!r}: a stored direction vector is zero or not finite; "
            "`check` names it, and `ingest` with `replace` recovers"
        )
    cos = np.clip((v @ q) / norms, -1.0, 1.0)
    scores = np.asarray(index_scores, np.float64)
    if len(scores) and not np.all(np.abs(cos - scores) <= SCORE_TOLERANCE):
        worst = int(np.argmax(np.where(np.isfinite(scores), np.abs(cos - scores), np.inf)))
        raise damaged_index(
            model_id,
            f"disagrees with the stored vectors (it scores a direction {scores[worst]:.4g}, "
            f"its stored vector {cos[worst]:.4g})",
        )
    return cos
