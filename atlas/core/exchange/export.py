"""Writing a bundle: the chosen models' rows as Parquet, their unembeddings and a manifest.

Rows are streamed in batches (bounded memory for large models) into Parquet files in a private
temporary folder, then packed into an uncompressed tar next to the output, which is renamed
into place only when complete.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from atlas.core.errors import AtlasError
from atlas.core.exchange.bundle_format import (
    MANIFEST_NAME,
    VECTOR_MODES,
    BundleManifest,
    BundleModel,
    Member,
    table_member,
    unembed_member,
)
from atlas.core.progress import Progress, no_progress
from atlas.core.reader import Reader
from atlas.core.store import TABLE_ORDER, sha256_file
from atlas.core.vectors import vector_column, vector_matrix
from atlas.core.versions import library_versions, version

BATCH_ROWS = 65_536
# Token strings compress well; vectors barely do (float noise), so zstd costs little for them.
COMPRESSION = "zstd"
# The row order of each table (a bundle of the same atlas is the same bundle).
ROW_ORDER = {
    "models": "model_id",
    "matrices": "matrix_id",
    "directions": "direction_id",
    "top_tokens": "direction_id, basis DESC, polarity DESC, rank",  # unembed, then embed
    "top_neurons": "direction_id, rank",
    "vocab": "token_id",
    "token_bags": "token_norm, direction_id",
    "coherence_null": "scope, sample",
    "composition": "src_layer, src_head, dst_layer, dst_head, mode",
    "composition_pairs": "src_layer, src_head, dst_layer, dst_head, mode, rank",
}


def export_bundle(
    a: Reader,
    model_ids: list[str],
    out: Path,
    vectors: str = "f32",
    progress: Progress = no_progress,
) -> BundleManifest:
    """Write ``model_ids`` of atlas ``a`` to the bundle file ``out``; returns its manifest.
    ``progress`` is told the models written.

    Indexes are not bundled: loading rebuilds them from the verified vectors.
    """
    if vectors not in VECTOR_MODES:
        raise AtlasError(f"must be one of {', '.join(VECTOR_MODES)}", param="vectors")
    model_ids = resolve_models(a, model_ids)
    if out.is_dir():
        raise AtlasError(f"{out} is a directory; give a bundle file name")
    if not out.parent.is_dir():
        raise AtlasError(f"folder {out.parent} does not exist")
    work = Path(tempfile.mkdtemp(prefix="svd-atlas-export-"))
    try:
        manifest = BundleManifest(
            vectors=vectors,
            svd_atlas_version=version("svd-atlas"),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            library_versions=library_versions(),
            models=[],
        )
        for position, model_id in enumerate(model_ids):
            manifest.models.append(_export_model(a, model_id, position, work, vectors))
            progress("models", position + 1, len(model_ids))
        for m in manifest.models:
            for name in m.members():
                path = work / name
                manifest.members[name] = Member(path.stat().st_size, sha256_file(path))
        _write_tar(manifest, work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def resolve_models(a: Reader, model_ids: list[str]) -> list[str]:
    """The requested models (all of them when none is named), each checked to exist."""
    if not model_ids:
        if not a.model_ids():
            raise AtlasError(f"{a.location} holds no models to export")
        return sorted(a.model_ids())
    for m in model_ids:
        a.require_model(m)
    return list(dict.fromkeys(model_ids))


def _export_model(a: Reader, model_id: str, position: int, work: Path, vectors: str) -> BundleModel:
    row = a.sql(f"SELECT * FROM {a.relation(model_id, 'models')}").to_pylist()[0]
    d_model = int(row["d_model"])
    directions = a.relation(model_id, "directions")
    if vectors != "none" and _scalar(a, f"SELECT count(*) FROM {directions} WHERE vector IS NULL"):
        raise AtlasError(
            f"model {model_id!r} has no vectors (it was loaded without them)",
            param="vectors",
            hint="export it with `vectors` none",
        )
    (work / table_member(position, "models")).parent.mkdir(parents=True)
    counts = {}
    for table in TABLE_ORDER:
        query = f"SELECT * FROM {a.relation(model_id, table)} ORDER BY {ROW_ORDER[table]}"
        counts[table] = _write_parquet(a, query, work / table_member(position, table), vectors)
    has_unembed = vectors != "none" and a.has_unembedding(model_id)
    if has_unembed:
        np.save(work / unembed_member(position), np.asarray(a.unembedding(model_id)))
    first_direction = int(_scalar(a, f"SELECT min(direction_id) FROM {directions}") or 0)
    first_matrix = int(
        _scalar(a, f"SELECT min(matrix_id) FROM {a.relation(model_id, 'matrices')}") or 0
    )
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
        has_unembed=has_unembed,
        ingest_versions=json.loads(row["versions"]),
    )


def _scalar(a: Reader, query: str) -> Any:
    return a.sql(query).column(0)[0].as_py()


def _write_parquet(a: Reader, query: str, target: Path, vectors: str) -> int:
    import pyarrow.parquet as pq  # here, not at CLI start (25 ms)

    n = 0
    writer: pq.ParquetWriter | None = None
    try:
        for batch in a.batches(query, None, BATCH_ROWS):
            table = pa.Table.from_batches([batch])
            if "vector" in table.column_names:
                table = encode_vectors(table, vectors)
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema, compression=COMPRESSION)
            writer.write_table(table)
            n += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return n


def encode_vectors(table: pa.Table, vectors: str) -> pa.Table:
    """The ``vector`` column as ``vectors`` asks: f32, f16 (half floats) or left out."""
    i = table.column_names.index("vector")
    if vectors == "none":
        return table.remove_column(i)
    dtype = np.float16 if vectors == "f16" else np.float32
    return table.set_column(i, "vector", vector_column(vector_matrix(table.column(i), dtype)))


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
