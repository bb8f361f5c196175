"""Importing a bundle into an atlas, all or nothing.

1. The bundle is verified and copied to a private temporary folder (``unpack``): paths, links,
   checksums, sizes and format version are checked before any table is read.
2. Every model's tables are read and checked for consistency (columns, model_id, contiguous
   unique ids, references, vector widths) before the atlas is touched.
3. Under the atlas's writer lock each model becomes a new store under ``.staging``, with ids
   allocated from the catalog, and one new catalog publishes them all (``AtlasDir.publish_many``).

Ids: a model keeps its exported ids when their range is free in the atlas (so a load into an
empty atlas is id-stable) and is shifted past the catalog's counters only on a collision; the
counters always end past every published id. A replaced model's ids count as taken: like a
re-ingest, a replacement never reuses the ids of what it replaces.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas.errors import AtlasError
from atlas.layout import RESIDUAL_INDEX, UNEMBED, AtlasDir, Catalog, CatalogEntry
from atlas.schema import build_metadata
from atlas.store import TABLE_ORDER, write_index, write_manifest, write_tables, writing_store
from query.exchange.bundle_format import (
    BundleModel,
    index_member,
    table_member,
    unembed_member,
)
from query.exchange.unpack import unpack_bundle

Refusal = Callable[[str], AtlasError]
_COLUMNS = {name: [c.name for c in t.columns] for name, t in build_metadata(None).tables.items()}


@dataclass
class ModelData:
    """One model read from a verified bundle, checked, with its vectors widened to float32."""

    model: BundleModel
    tables: dict[str, pa.Table]
    vectors: np.ndarray | None
    first_direction_id: int
    first_matrix_id: int
    index_file: Path | None
    unembed: np.ndarray | None

    @property
    def n_directions(self) -> int:
        return self.tables["directions"].num_rows

    @property
    def n_matrices(self) -> int:
        return self.tables["matrices"].num_rows


@dataclass
class LoadResult:
    model_id: str
    n_directions: int
    vectors: str
    first_direction_id: int
    bundle_first_direction_id: int
    first_matrix_id: int
    bundle_first_matrix_id: int
    replaced: bool

    @property
    def remapped(self) -> bool:
        return (self.first_direction_id, self.first_matrix_id) != (
            self.bundle_first_direction_id,
            self.bundle_first_matrix_id,
        )


def load_bundle(root: str | Path, bundle: str | Path, replace: bool = False) -> list[LoadResult]:
    """Import every model of ``bundle`` into the atlas at ``root``; see the module notes."""
    bundle, atlas_dir = Path(bundle), AtlasDir(root)
    with tempfile.TemporaryDirectory(prefix="svd-atlas-load-") as tmp:
        manifest = unpack_bundle(bundle, Path(tmp))
        models = [read_model(Path(tmp), m, manifest.vectors, str(bundle)) for m in manifest.models]
        _refuse_existing(atlas_dir, models, replace)
        with atlas_dir.writer_lock():
            catalog = atlas_dir.read_catalog()
            _refuse_existing(atlas_dir, models, replace)
            atlas_dir.sweep(catalog)
            staged: list[tuple[str, Path, CatalogEntry]] = []
            results = []
            try:
                with writing_store(atlas_dir.root):
                    for data in models:
                        staging = atlas_dir.new_staging_dir()
                        replaced = data.model.model_id in catalog.models
                        entry = _allocate(catalog, data, [e for _, _, e in staged])
                        staged.append((data.model.model_id, staging, entry))
                        _build_store(staging, data, entry, manifest.vectors, bundle.name)
                        results.append(_result(data, entry, manifest.vectors, replaced))
                    atlas_dir.publish_many(staged, catalog)
            finally:
                for _, staging, _ in staged:
                    shutil.rmtree(staging, ignore_errors=True)
    return results


def _refuse_existing(atlas_dir: AtlasDir, models: list[ModelData], replace: bool) -> None:
    published = atlas_dir.read_catalog().models
    existing = [d.model.model_id for d in models if d.model.model_id in published]
    if existing and not replace:
        raise AtlasError(
            f"model {existing[0]!r} is already in {atlas_dir.root}; pass --replace to replace it"
        )


def read_model(folder: Path, model: BundleModel, vectors: str, source: str) -> ModelData:
    """Read one model's verified members and check that they form a consistent store."""

    def bad(why: str) -> AtlasError:
        return AtlasError(f"{source}: model {model.model_id!r} is inconsistent: {why}")

    tables = {}
    for table in TABLE_ORDER:
        member = table_member(model.position, table)
        try:
            tables[table] = pq.read_table(folder / member)
        except (pa.ArrowException, OSError) as exc:
            raise AtlasError(f"{source}: member {member!r} is not valid Parquet ({exc})") from None
        expected = [c for c in _COLUMNS[table] if not (c == "vector" and vectors == "none")]
        if sorted(tables[table].column_names) != sorted(expected):
            raise bad(f"table {table} has columns {tables[table].column_names}")
    row = tables["models"].to_pylist()
    if len(row) != 1 or row[0]["model_id"] != model.model_id or row[0]["d_model"] != model.d_model:
        raise bad("its models row does not match the manifest")
    for table in ("matrices", "directions"):
        if pc.any(pc.not_equal(tables[table]["model_id"], model.model_id)).as_py():
            raise bad(f"{table} holds rows of another model")
    matrix_ids = _contiguous_ids(tables["matrices"], "matrix_id", bad)
    direction_ids = _contiguous_ids(tables["directions"], "direction_id", bad)
    _check_refs(tables["directions"], "matrix_id", matrix_ids, bad)
    for table in ("top_tokens", "top_neurons"):
        _check_refs(tables[table], "direction_id", direction_ids, bad)

    vecs = None
    if vectors != "none":
        vecs = _vectors(tables["directions"], model.d_model, bad)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), model.d_model)
        i = tables["directions"].column_names.index("vector")
        tables["directions"] = tables["directions"].set_column(i, "vector", column)
    index = folder / index_member(model.position) if model.has_index else None
    unembed = _unembedding(folder, model, tables["vocab"].num_rows, bad)
    return ModelData(
        model=model,
        tables=tables,
        vectors=vecs,
        first_direction_id=int(direction_ids[0]) if len(direction_ids) else 0,
        first_matrix_id=int(matrix_ids[0]) if len(matrix_ids) else 0,
        index_file=index,
        unembed=unembed,
    )


def _unembedding(folder: Path, model: BundleModel, d_vocab: int, bad: Refusal) -> np.ndarray | None:
    """The centered unembedding, read as plain data (never pickle) and shape-checked."""
    if not model.has_unembed:
        return None
    try:
        unembed = np.load(folder / unembed_member(model.position), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise bad(f"its unembedding is not a valid .npy array ({exc})") from None
    if unembed.dtype != np.float16 or unembed.shape != (d_vocab, model.d_model):
        raise bad(f"its unembedding has shape {unembed.shape} {unembed.dtype}")
    if not np.isfinite(unembed).all():
        raise bad("its unembedding holds NaN or infinite values")
    return unembed


def _contiguous_ids(table: pa.Table, column: str, bad: Refusal) -> np.ndarray:
    ids = np.sort(table[column].to_numpy())
    if len(ids) and (ids[0] < 0 or not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids)))):
        raise bad(f"{column} values are not unique and contiguous")
    return ids


def _check_refs(table: pa.Table, column: str, valid: np.ndarray, bad: Refusal) -> None:
    if not np.isin(table[column].to_numpy(), valid).all():
        raise bad(f"a {column} refers to a row that is not in the bundle")


def _vectors(directions: pa.Table, d_model: int, bad: Refusal) -> np.ndarray:
    """The vectors as float32 rows; half floats are widened and renormalised to unit length."""
    column = directions["vector"].combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) and not pa.types.is_list(column.type):
        raise bad("vector is not a list column")
    if column.null_count or not pa.types.is_floating(column.type.value_type):
        raise bad("vector holds nulls or non-float values")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    if flat.size != directions.num_rows * d_model:
        raise bad(f"vectors do not all have d_model = {d_model} values")
    vecs = flat.astype(np.float32).reshape(-1, d_model)
    if not np.isfinite(vecs).all():
        raise bad("vectors hold NaN or infinite values")
    if flat.dtype == np.float16:
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs /= np.where(norms > 0, norms, 1)
    return vecs


def _allocate(catalog: Catalog, data: ModelData, pending: list[CatalogEntry]) -> CatalogEntry:
    """Keep the bundle's id ranges where they are free, else take fresh ones; bump counters.

    ``pending`` are the entries already allocated to earlier models of the same bundle.
    """
    taken = [*catalog.models.values(), *pending]
    taken_d = [(e.first_direction_id, e.n_directions) for e in taken]
    taken_m = [(e.first_matrix_id, e.n_matrices) for e in taken]
    first_d, catalog.next_direction_id = _place(
        data.first_direction_id, data.n_directions, taken_d, catalog.next_direction_id
    )
    first_m, catalog.next_matrix_id = _place(
        data.first_matrix_id, data.n_matrices, taken_m, catalog.next_matrix_id
    )
    return CatalogEntry("", first_d, data.n_directions, first_m, data.n_matrices)


def _place(first: int, n: int, taken: list[tuple[int, int]], counter: int) -> tuple[int, int]:
    counter = max([counter] + [lo + m for lo, m in taken])
    collides = n > 0 and any(first < lo + m and lo < first + n for lo, m in taken if m > 0)
    start = counter if collides else first
    return start, max(counter, start + n)


def _build_store(
    staging: Path, data: ModelData, entry: CatalogEntry, vectors: str, bundle_name: str
) -> None:
    shift_d = entry.first_direction_id - data.first_direction_id
    shift_m = entry.first_matrix_id - data.first_matrix_id
    tables = dict(data.tables)
    tables["matrices"] = _shift(tables["matrices"], "matrix_id", shift_m)
    tables["directions"] = _shift(tables["directions"], "matrix_id", shift_m)
    for table in ("directions", "top_tokens", "top_neurons"):
        tables[table] = _shift(tables[table], "direction_id", shift_d)
    try:
        write_tables(staging, tables, data.model.d_model, with_vectors=data.vectors is not None)
    except duckdb.Error as exc:
        raise AtlasError(f"model {data.model.model_id!r} could not be stored: {exc}") from None
    if data.vectors is not None:
        ids = tables["directions"]["direction_id"].to_numpy()
        if data.index_file is not None and shift_d == 0 and _index_matches(data, ids):
            shutil.copyfile(data.index_file, staging / RESIDUAL_INDEX)
        else:
            write_index(staging, data.vectors, ids, tables["models"]["index_type"][0].as_py())
    if data.unembed is not None:
        np.save(staging / UNEMBED, data.unembed)
    counts = {t: tables[t].num_rows for t in TABLE_ORDER if t != "models"}
    provenance = {
        "bundle": bundle_name,
        "first_direction_id": data.first_direction_id,
        "first_matrix_id": data.first_matrix_id,
    }
    write_manifest(
        staging, data.model.model_id, counts, {"vectors": vectors, "loaded_from": provenance}
    )


def _index_matches(data: ModelData, ids: np.ndarray) -> bool:
    """A bundled index is used only if it holds exactly this model's ids at its width."""
    import faiss

    index = faiss.read_index(str(data.index_file))  # binary parsing of a checksummed file
    if not isinstance(index, faiss.IndexIDMap2):
        return False
    if index.ntotal != len(ids) or index.d != data.model.d_model:
        return False
    stored = faiss.vector_to_array(index.id_map)
    return bool(np.array_equal(np.sort(stored), np.sort(ids)))


def _shift(table: pa.Table, column: str, by: int) -> pa.Table:
    if by == 0:
        return table
    i = table.column_names.index(column)
    return table.set_column(i, column, pc.add(table[column].cast(pa.int64()), by))


def _result(data: ModelData, entry: CatalogEntry, vectors: str, replaced: bool) -> LoadResult:
    return LoadResult(
        model_id=data.model.model_id,
        n_directions=data.n_directions,
        vectors=vectors,
        first_direction_id=entry.first_direction_id,
        bundle_first_direction_id=data.first_direction_id,
        first_matrix_id=entry.first_matrix_id,
        bundle_first_matrix_id=data.first_matrix_id,
        replaced=replaced,
    )
