"""Writing a bundle: the chosen models' rows as Parquet, a manifest, optionally their indexes.

Rows are streamed in batches (bounded memory for large models) into Parquet files in a private
temporary folder, then packed into an uncompressed tar next to the output, which is renamed
into place only when complete.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atlas.errors import AtlasError
from atlas.handle import Atlas
from atlas.layout import UNEMBED
from atlas.store import sha256_file
from query.exchange.bundle_format import (
    MANIFEST_NAME,
    VECTOR_MODES,
    BundleManifest,
    BundleModel,
    Member,
    index_member,
    table_member,
    unembed_member,
)

BATCH_ROWS = 65_536
# Token strings compress well; vectors barely do (float noise), so zstd costs little for them.
COMPRESSION = "zstd"
# Each table of one model, in a stable order (a bundle of the same atlas is the same bundle).
MODEL_QUERIES = {
    "models": "SELECT * FROM models WHERE model_id = $m",
    "matrices": "SELECT * FROM matrices WHERE model_id = $m ORDER BY matrix_id",
    "directions": "SELECT * FROM directions WHERE model_id = $m ORDER BY direction_id",
    "top_tokens": (
        "SELECT t.* FROM top_tokens t SEMI JOIN directions d "
        "ON t.direction_id = d.direction_id AND d.model_id = $m "
        "ORDER BY t.direction_id, t.polarity DESC, t.rank"
    ),
    "top_neurons": (
        "SELECT t.* FROM top_neurons t SEMI JOIN directions d "
        "ON t.direction_id = d.direction_id AND d.model_id = $m ORDER BY t.direction_id, t.rank"
    ),
    "vocab": "SELECT * FROM vocab WHERE model_id = $m ORDER BY token_id",
    "coherence_null": ("SELECT * FROM coherence_null WHERE model_id = $m ORDER BY scope, sample"),
}


def export_bundle(
    a: Atlas, model_ids: list[str], out: Path, vectors: str = "f32", with_index: bool = False
) -> BundleManifest:
    """Write ``model_ids`` of atlas ``a`` to the bundle file ``out``; returns its manifest."""
    if vectors not in VECTOR_MODES:
        raise AtlasError(f"--vectors must be one of {', '.join(VECTOR_MODES)}")
    if with_index and vectors != "f32":
        raise AtlasError("--index needs --vectors f32 (an index holds full-precision vectors)")
    model_ids = resolve_models(a, model_ids)
    if out.is_dir():
        raise AtlasError(f"{out} is a directory; give a bundle file name")
    if not out.parent.is_dir():
        raise AtlasError(f"folder {out.parent} does not exist")
    work = Path(tempfile.mkdtemp(prefix="svd-atlas-export-"))
    try:
        manifest = BundleManifest(
            vectors=vectors,
            svd_atlas_version=_version("svd-atlas"),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            library_versions=exporter_versions(),
            models=[],
        )
        for position, model_id in enumerate(model_ids):
            manifest.models.append(_export_model(a, model_id, position, work, vectors, with_index))
        for m in manifest.models:
            for name in m.members():
                path = work / name
                manifest.members[name] = Member(path.stat().st_size, sha256_file(path))
        _write_tar(manifest, work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def resolve_models(a: Atlas, model_ids: list[str]) -> list[str]:
    """The requested models (all of them when none is named), each checked to exist."""
    available = a.model_ids()
    if not model_ids:
        if not available:
            raise AtlasError(f"{a.root} holds no models to export")
        return sorted(available)
    for m in model_ids:
        if m not in available:
            raise AtlasError(
                f"no model {m!r} in {a.root}; it holds: {', '.join(available) or 'nothing'}"
            )
    return list(dict.fromkeys(model_ids))


def _export_model(
    a: Atlas, model_id: str, position: int, work: Path, vectors: str, with_index: bool
) -> BundleModel:
    row = a.sql("SELECT * FROM models WHERE model_id = ?", [model_id]).to_pylist()[0]
    d_model = int(row["d_model"])
    if vectors != "none":
        query = "SELECT count(*) FROM directions WHERE model_id = ? AND vector IS NULL"
        if _scalar(a, query, model_id):
            raise AtlasError(
                f"model {model_id!r} has no vectors (it was loaded without them): "
                "export it with --vectors none"
            )
    (work / table_member(position, "models")).parent.mkdir(parents=True)
    counts = {}
    for table, query in MODEL_QUERIES.items():
        target = work / table_member(position, table)
        counts[table] = _write_parquet(a, query, model_id, target, vectors, d_model)
    if with_index:
        shutil.copyfile(a.index_path(model_id), work / index_member(position))
    has_unembed = vectors != "none"
    if has_unembed:
        shutil.copyfile(a.store_path(model_id) / UNEMBED, work / unembed_member(position))
    first_direction = _first_id(a, "directions", "direction_id", model_id)
    first_matrix = _first_id(a, "matrices", "matrix_id", model_id)
    return BundleModel(
        model_id=model_id,
        position=position,
        d_model=d_model,
        architecture=row["architecture"],
        source=row["source"],
        processing=row["processing"],
        counts=counts,
        first_direction_id=first_direction,
        n_directions=counts["directions"],
        first_matrix_id=first_matrix,
        n_matrices=counts["matrices"],
        has_index=with_index,
        has_unembed=has_unembed,
        ingest_versions=json.loads(row["versions"]),
    )


def _scalar(a: Atlas, query: str, model_id: str) -> Any:
    return a.sql(query, [model_id]).column(0)[0].as_py()


def _first_id(a: Atlas, table: str, column: str, model_id: str) -> int:
    return int(_scalar(a, f"SELECT min({column}) FROM {table} WHERE model_id = ?", model_id) or 0)


def _write_parquet(
    a: Atlas, query: str, model_id: str, target: Path, vectors: str, d_model: int
) -> int:
    n = 0
    writer: pq.ParquetWriter | None = None
    try:
        for batch in _batches(a, query, model_id):
            table = pa.Table.from_batches([batch])
            if "vector" in table.column_names:
                table = _encode_vectors(table, vectors, d_model)
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema, compression=COMPRESSION)
            writer.write_table(table)
            n += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return n


def _batches(a: Atlas, query: str, model_id: str) -> Iterator[pa.RecordBatch]:
    reader = a.con.sql(query, params={"m": model_id}).to_arrow_reader(BATCH_ROWS)
    schema = reader.schema
    yielded = False
    for batch in reader:
        yielded = True
        yield batch
    if not yielded:  # keep the schema even for an empty table
        yield pa.RecordBatch.from_pylist([], schema=schema)


def _encode_vectors(table: pa.Table, vectors: str, d_model: int) -> pa.Table:
    i = table.column_names.index("vector")
    if vectors == "none":
        return table.remove_column(i)
    flat = table.column(i).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    dtype = np.float16 if vectors == "f16" else np.float32
    values = pa.array(flat.astype(dtype, copy=False))
    column = pa.FixedSizeListArray.from_arrays(values, d_model)
    return table.set_column(i, "vector", column)


def _write_tar(manifest: BundleManifest, work: Path, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.partial")
    mtime = int(dt.datetime.now(dt.UTC).timestamp())
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            payload = json.dumps(manifest.to_json(), indent=2).encode("utf-8")
            info = _file_info(MANIFEST_NAME, len(payload), mtime)
            tar.addfile(info, io.BytesIO(payload))
            for name, member in manifest.members.items():
                with open(work / name, "rb") as fh:
                    tar.addfile(_file_info(name, member.bytes, mtime), fh)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _file_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info


def exporter_versions() -> dict[str, str]:
    names = ("svd-atlas", "duckdb", "pyarrow", "numpy", "faiss-cpu")
    return {"python": platform.python_version(), **{n: _version(n) for n in names}}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
