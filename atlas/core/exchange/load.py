"""Importing a bundle into an atlas, all or nothing.

1. The bundle is verified and copied to a private temporary folder (``unpack``): paths, links,
   checksums, sizes and format version are checked before any table is read. A bundle of an
   older format version is read through its upgrade (``bundle_format.upgrade_table``): the
   tables it lacks are empty.
2. Every model's tables are read and checked for consistency (columns, model_id, contiguous
   unique ids, references, vector widths) before the atlas is touched.
3. Ids are reserved, each model becomes a new store under ``.staging`` and one new catalog
   publishes them all (``atlas.core.publish``, the path ingest takes too). The FAISS index is
   always rebuilt from the verified vectors: a bundle's index is never trusted.

Ids: a model keeps its exported ids when they are at or above the atlas's counters (so a load
into an empty atlas is id-stable) and moves past them otherwise. Every id below a counter is
taken, including the ids of replaced models: ids are never reused.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas.core.errors import AtlasError, one_line
from atlas.core.exchange.bundle_format import (
    FORMAT_VERSION,
    BundleModel,
    table_member,
    tables_of,
    unembed_member,
    upgrade_table,
)
from atlas.core.exchange.unpack import unpack_bundle
from atlas.core.layout import UNEMBED, AtlasDir
from atlas.core.model_lock import model_lock
from atlas.core.progress import Progress, no_progress
from atlas.core.publish import IdRange, publish, refuse_existing, reserve_ids, store_record
from atlas.core.sqlguard import raise_interrupt
from atlas.core.store import (
    TABLE_ORDER,
    write_index_by_layer,
    write_manifest,
    write_tables,
    writing_store,
)
from atlas.core.value_checks import value_problems
from atlas.core.vectors import BadValues, python_rows, vector_column, vector_matrix

Refusal = Callable[[str], AtlasError]
UNIT_TOLERANCE = 1e-4  # float32 unit vectors
UNIT_TOLERANCE_F16 = 1e-2  # rounded to half precision before renormalising


@functools.cache
def _columns() -> dict[str, list[str]]:
    """Each contract table's columns (SQLAlchemy is imported only when a bundle is loaded)."""
    from atlas.core.schema import build_metadata

    return {name: [c.name for c in t.columns] for name, t in build_metadata(None).tables.items()}


@dataclass
class ModelData:
    """One model read from a verified bundle, checked, with its vectors widened to float32."""

    model: BundleModel
    tables: dict[str, pa.Table]
    vectors: np.ndarray | None
    first_direction_id: int
    first_matrix_id: int
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


def load_bundle(
    root: str | Path, bundle: str | Path, replace: bool = False, progress: Progress = no_progress
) -> list[LoadResult]:
    """Import every model of ``bundle`` into the atlas at ``root``; see the module notes.
    ``progress`` is told the models built (before the one publish)."""
    bundle, atlas_dir = Path(bundle), AtlasDir(root)
    with tempfile.TemporaryDirectory(prefix="svd-atlas-load-") as tmp:
        manifest = unpack_bundle(bundle, Path(tmp))
        models = [
            read_model(Path(tmp), m, manifest.vectors, str(bundle), manifest.read_version)
            for m in manifest.models
        ]
        model_ids = [d.model.model_id for d in models]
        atlas_dir.ensure_writable()
        locks = contextlib.ExitStack()
        for model_id in model_ids:  # one writer per model id (an ingest, another load)
            locks.enter_context(model_lock(atlas_dir, model_id))
        with locks:
            return _load(atlas_dir, bundle, manifest.vectors, models, replace, progress)


def _load(
    atlas_dir: AtlasDir,
    bundle: Path,
    vectors: str,
    models: list[ModelData],
    replace: bool,
    progress: Progress,
) -> list[LoadResult]:
    """Reserve, build and publish the checked ``models`` (their model locks held)."""
    model_ids = [d.model.model_id for d in models]
    refuse_existing(atlas_dir, model_ids, replace)
    published = set(atlas_dir.read_catalog().models)
    ranges = reserve_ids(
        atlas_dir,
        [(d.n_directions, d.n_matrices) for d in models],
        [(d.first_direction_id, d.first_matrix_id) for d in models],
    )
    with contextlib.ExitStack() as stack, writing_store(atlas_dir.root):
        staged = []
        for data, ids in zip(models, ranges, strict=True):
            staging = stack.enter_context(atlas_dir.staging())
            _build_store(staging, data, ids, vectors, bundle.name)
            staged.append((data.model.model_id, staging, ids))
            progress("models", len(staged), len(models))
        publish(atlas_dir, staged, replace)
    return [
        _result(data, ids, vectors, data.model.model_id in published)
        for data, ids in zip(models, ranges, strict=True)
    ]


def read_model(
    folder: Path, model: BundleModel, vectors: str, source: str, version: int
) -> ModelData:
    """Read one model's verified members and check that they form a consistent store
    (``version``: the bundle's format version; an older one's are upgraded as they are
    read)."""
    import pyarrow.parquet as pq  # here, not at CLI start (25 ms)

    def bad(why: str) -> AtlasError:
        return AtlasError(f"{source}: model {model.model_id!r} is inconsistent: {why}")

    tables = {}
    for table in TABLE_ORDER:
        if table not in tables_of(version):
            tables[table] = _empty(table)
            continue
        member = table_member(model.position, table)
        try:
            tables[table] = pq.read_table(folder / member)
        except (pa.ArrowException, OSError) as exc:
            reason = one_line(exc)
            message = f"{source}: member {member!r} is not valid Parquet ({reason})"
            raise AtlasError(message) from None
        if version < FORMAT_VERSION:
            tables[table] = upgrade_table(table, tables[table], _columns()[table], version)
        expected = {c for c in _columns()[table] if not (c == "vector" and vectors == "none")}
        if set(tables[table].column_names) != expected:
            raise bad(f"table {table} has columns {tables[table].column_names}")
    try:
        row = python_rows(tables["models"])
    except BadValues as exc:
        raise bad(f"models: {exc}") from None
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
        i = tables["directions"].column_names.index("vector")
        tables["directions"] = tables["directions"].set_column(i, "vector", vector_column(vecs))
    unembed = _unembedding(folder, model, tables["vocab"].num_rows, bad)
    problems = bundle_value_problems(model.model_id, tables, unembed)
    if problems:
        raise AtlasError(f"{source}: {problems[0]}")
    return ModelData(
        model=model,
        tables=tables,
        vectors=vecs,
        first_direction_id=int(direction_ids[0]) if len(direction_ids) else 0,
        first_matrix_id=int(matrix_ids[0]) if len(matrix_ids) else 0,
        unembed=unembed,
    )


def bundle_value_problems(
    model_id: str, tables: dict[str, pa.Table], unembed: np.ndarray | None
) -> list[str]:
    """sigma and top-token scores as values (``atlas.core.value_checks``); the vectors were
    checked in full already (``_vectors``)."""
    con = duckdb.connect(":memory:", config={"temp_directory": ""})
    try:
        for table in ("models", "directions", "top_tokens"):
            con.register(table, tables[table])
        has_vectors = "vector" in tables["directions"].column_names
        directions = (
            "directions" if has_vectors else "(SELECT *, NULL::FLOAT[] AS vector FROM directions)"
        )

        def run(query: str, params: list[Any] | None) -> pa.Table:
            return con.sql(query, params=params).to_arrow_table()

        return value_problems(
            run, model_id, "models", directions, "top_tokens", unembed, vectors="none"
        )
    finally:
        con.close()


def _unembedding(folder: Path, model: BundleModel, d_vocab: int, bad: Refusal) -> np.ndarray | None:
    """The centered unembedding, read as plain data (never pickle) and shape-checked."""
    if not model.has_unembed:
        return None
    try:
        unembed = np.load(folder / unembed_member(model.position), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise bad(f"its unembedding is not a valid .npy array ({one_line(exc)})") from None
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
    if len(column) and pc.any(pc.not_equal(pc.list_value_length(column), d_model)).as_py():
        raise bad(f"vectors do not all have d_model = {d_model} values")
    half = column.type.value_type == pa.float16()
    vecs = vector_matrix(column)
    ids = directions["direction_id"].to_numpy()
    finite = np.isfinite(vecs).all(axis=1)
    if not finite.all():
        raise bad(f"the vector of direction {ids[np.argmin(finite)]} holds NaN or infinite values")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    off = np.abs(norms[:, 0] - 1) > (UNIT_TOLERANCE_F16 if half else UNIT_TOLERANCE)
    if off.any():
        first = int(np.argmax(off))
        raise bad(
            f"direction vectors are not unit length (direction {ids[first]} has norm "
            f"{norms[first, 0]:.6g})"
        )
    if half:
        vecs /= norms
    return vecs


def _build_store(
    staging: Path, data: ModelData, ids: IdRange, vectors: str, bundle_name: str
) -> None:
    shift_d = ids.first_direction_id - data.first_direction_id
    shift_m = ids.first_matrix_id - data.first_matrix_id
    tables = dict(data.tables)
    tables["matrices"] = _shift(tables["matrices"], "matrix_id", shift_m)
    tables["directions"] = _shift(tables["directions"], "matrix_id", shift_m)
    for table in ("directions", "top_tokens", "top_neurons"):
        tables[table] = _shift(tables[table], "direction_id", shift_d)
    for column in ("src_direction_id", "dst_direction_id"):
        tables["composition_pairs"] = _shift(tables["composition_pairs"], column, shift_d)
    try:
        write_tables(staging, tables, data.model.d_model, with_vectors=data.vectors is not None)
    except duckdb.Error as exc:
        raise_interrupt(exc)
        reason = one_line(exc)
        raise AtlasError(f"model {data.model.model_id!r} could not be stored: {reason}") from None
    if data.vectors is not None:
        index_type = tables["models"]["index_type"][0].as_py()
        write_index_by_layer(staging, tables["directions"], index_type)
    if data.unembed is not None:
        np.save(staging / UNEMBED, data.unembed)
    provenance = {
        "bundle": bundle_name,
        "first_direction_id": data.first_direction_id,
        "first_matrix_id": data.first_matrix_id,
    }
    record = store_record(data.model.model_id, ids, tables["models"]["spec"][0].as_py())
    write_manifest(staging, {**record, "vectors": vectors, "loaded_from": provenance})


def _empty(table: str) -> pa.Table:
    """A contract table with no rows (one an older bundle does not have)."""
    from atlas.core.schema import empty_table_ddl

    con = duckdb.connect(":memory:")
    try:
        con.execute(empty_table_ddl(table))
        return con.sql(f"SELECT * FROM {table}").to_arrow_table()
    finally:
        con.close()


def _shift(table: pa.Table, column: str, by: int) -> pa.Table:
    if by == 0:
        return table
    i = table.column_names.index(column)
    return table.set_column(i, column, pc.add(table[column].cast(pa.int64()), by))


def _result(data: ModelData, entry: IdRange, vectors: str, replaced: bool) -> LoadResult:
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
