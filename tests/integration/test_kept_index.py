"""A kept index (``Atlas.load_indexes``, the server): compared with the store in full when it is
read, then the source of the hits' vectors. The oracle is DuckDB's own ``directions.vector``,
read here straight from the store's file, and the search of a handle that keeps nothing (every
hit's vector read from DuckDB)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pytest

import atlas
from atlas.core.errors import AtlasWarning, DamagedIndex
from atlas.core.indexes import build_index, shard_files, write_index
from query.vectors import text_residual_vector

MODEL = "bert-like"


def _store(root: Path, model_id: str = MODEL) -> Path:
    catalog = json.loads((root / "catalog.json").read_text())
    return root / catalog["models"][model_id]["store"]


def _duckdb_vectors(root: Path, model_id: str = MODEL) -> tuple[np.ndarray, np.ndarray]:
    con = duckdb.connect(str(_store(root, model_id) / "model.duckdb"), read_only=True)
    try:
        rows = con.sql("SELECT direction_id, vector FROM directions ORDER BY direction_id")
        ids, vectors = zip(*rows.fetchall(), strict=True)
    finally:
        con.close()
    return np.array(ids, np.int64), np.array(vectors, np.float32)


def test_a_kept_index_gives_the_stored_vectors_and_the_same_hits(small_atlas: Path) -> None:
    ids, vectors = _duckdb_vectors(small_atlas)
    picked = np.random.default_rng(0).choice(len(ids), 40, replace=False)
    with atlas.open(small_atlas) as lazy, atlas.open(small_atlas) as kept:
        kept.load_indexes(1 << 30)
        assert MODEL in kept.loaded_indexes()
        read = kept.reader.stored_vectors(MODEL, ids[picked])
        np.testing.assert_array_equal(read, vectors[picked])
        for query in ("fire", "water king"):
            expected = [h.to_dict() for h in lazy.search(query, model=MODEL, k=10)]
            assert [h.to_dict() for h in kept.search(query, model=MODEL, k=10)] == expected


def test_a_kept_index_whose_vector_differs_by_an_ulp_is_refused(
    small_atlas: Path, small_copy: Path
) -> None:
    """A change far below the per-search tolerance (1e-3) is still found when an index is kept:
    the model is left out of the kept indexes with a warning, and its searches are refused
    while its files are the ones compared (a hit-by-hit check would miss a changed vector
    that is never a hit); files written again (a repair) are searched again."""
    ids, vectors = _duckdb_vectors(small_copy)
    (shard,) = shard_files(_store(small_copy))
    changed = vectors.copy()
    changed[7] = np.nextafter(changed[7], np.float32(2))
    before = shard.stat().st_size
    con = duckdb.connect(str(_store(small_copy) / "model.duckdb"), read_only=True)
    ((index_type,),) = con.sql("SELECT index_type FROM models").fetchall()
    con.close()
    write_index(build_index(changed, ids, index_type), shard)
    assert shard.stat().st_size == before  # the manifest's size: only a full comparison sees it
    with atlas.open(small_copy) as a:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", AtlasWarning)
            a.load_indexes(1 << 30)
        assert [str(w.message) for w in seen if MODEL in str(w.message)] == [
            f"model {MODEL!r}: its FAISS index holds 1 vectors that differ from the stored ones; "
            "a repair (`check` with `repair`) rebuilds it"
        ]
        assert MODEL not in a.loaded_indexes() and MODEL in a.damaged_indexes()
        np.testing.assert_array_equal(a.reader.stored_vectors(MODEL, ids[7:8]), vectors[7:8])
        for _ in range(2):  # refused every time, not only the first
            with pytest.raises(DamagedIndex, match="1 vectors that differ from the stored ones"):
                a.search("fire", model=MODEL, k=5)
        with pytest.raises(DamagedIndex, match="differ from the stored ones"):
            a.trace(int(ids[7]), same_model=True)
        assert a.search("fire", model="llama-tiny", k=5)  # the other models are searched
        write_index(build_index(vectors, ids, index_type), shard)  # what a repair writes
        with atlas.open(small_atlas) as healthy:
            expected = [h.direction_id for h in healthy.search("fire", model=MODEL, k=5)]
        assert [h.direction_id for h in a.search("fire", model=MODEL, k=5)] == expected


def test_a_kept_index_whose_file_changes_afterwards_is_checked_hit_by_hit_again(
    small_atlas: Path, small_copy: Path
) -> None:
    """What was compared stays trusted only while its files are the ones read: a shard
    overwritten in place later (the index maps it) sends every search back to checking its
    hits against DuckDB, so the scores shown are the stored vectors' or the search refuses."""
    ids, vectors = _duckdb_vectors(small_copy)
    (shard,) = shard_files(_store(small_copy))
    with atlas.open(small_atlas) as healthy:
        q, _ = text_residual_vector(healthy.reader, MODEL, ["fire"])
    cosines = dict(zip(ids.tolist(), np.abs(vectors.astype(np.float64) @ q), strict=True))
    with atlas.open(small_copy) as a:
        a.load_indexes(1 << 30)
        assert MODEL in a.loaded_indexes() and a.reader.indexes.pinned(MODEL).files_unchanged()
        data = bytearray(shard.read_bytes())
        assert len(data) > 8192
        with open(shard, "r+b") as fh:  # the vectors' bytes, flipped in place
            fh.seek(4096)
            fh.write(bytes(b ^ 0xFF for b in data[4096:]))
        assert not a.reader.indexes.pinned(MODEL).files_unchanged()
        np.testing.assert_array_equal(a.reader.stored_vectors(MODEL, ids), vectors)
        try:
            hits = a.search("fire", model=MODEL, k=5)
        except DamagedIndex:
            return
        for hit in hits:  # any hit shown is scored from its stored vector
            assert hit.score == pytest.approx(cosines[hit.direction_id], abs=1e-5)


def test_keeping_an_index_leaves_no_vectors_cached_in_the_session(minilm_atlas: Path) -> None:
    """The comparison reads every stored vector; those blocks are not kept in the handle's
    DuckDB session afterwards (a server worker would hold them for its lifetime)."""
    _, vectors = _duckdb_vectors(minilm_atlas, "minilm")

    def cached_bytes(a: atlas.Atlas) -> int:
        query = "SELECT memory_usage_bytes FROM duckdb_memory() WHERE tag = 'BASE_TABLE'"
        return int(a.reader.sql(query).column(0)[0].as_py())

    with atlas.open(minilm_atlas) as kept:
        before = cached_bytes(kept)
        kept.load_indexes(1 << 30)
        assert kept.loaded_indexes() == ["minilm"]
        assert cached_bytes(kept) - before < vectors.nbytes / 10
        kept.reader.sql("SELECT sum(list_sum(vector)) FROM directions")  # the oracle: it counts
        assert cached_bytes(kept) - before > vectors.nbytes / 2
