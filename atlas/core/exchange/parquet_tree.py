"""Writing models into a Parquet tree (see ``tree_format``), on local disk or an object store.

A tree grows model by model: exporting a model writes its partition of every table and leaves
the other models' partitions alone, so models can be added (or re-exported) without rewriting
the rest. Each file is written under a temporary name and then moved into place (one PUT on an
object store), and the marker, which names the tree's models, is written last: a reader of the
marker never sees a model whose files are incomplete. Rows are streamed in batches, so memory
stays bounded for large models.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pyarrow as pa

from atlas.core.contract import TABLES
from atlas.core.errors import AtlasError, one_line
from atlas.core.exchange.export import BATCH_ROWS, COMPRESSION, ROW_ORDER, resolve_models
from atlas.core.exchange.tree_format import (
    DATA_FILE,
    FORMAT,
    FORMAT_VERSION,
    MARKER,
    PARTITION,
    SHARED_IDS_HINT,
    UNEMBED_DIR,
    UNEMBED_FILE,
    VECTOR_MODES,
    check_marker,
    partition_dir,
    store_errors,
    tree_filesystem,
)
from atlas.core.jsondata import load_json
from atlas.core.progress import Progress, no_progress
from atlas.core.reader import Reader
from atlas.core.versions import library_versions


def export_parquet_tree(
    a: Reader,
    model_ids: list[str],
    dest: str,
    vectors: str = "f32",
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Write ``model_ids`` of ``a`` (all when empty) into the tree at ``dest`` (created when
    new); returns the marker, with ``written`` naming the models just written. ``progress``
    is told the models written."""
    if vectors not in VECTOR_MODES:
        raise AtlasError(
            "a Parquet tree stores vectors as f32 or not at all (f32 or none)", param="vectors"
        )
    model_ids = resolve_models(a, model_ids)
    with store_errors(dest):
        return _export(a, model_ids, dest, vectors, progress)


def _export(
    a: Reader, model_ids: list[str], dest: str, vectors: str, progress: Progress
) -> dict[str, Any]:
    fs, root = tree_filesystem(dest)
    info = _existing_marker(fs, root, dest)
    if info is None:
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "vectors": vectors}
        info["models"] = {}
    elif info["vectors"] != vectors:
        raise AtlasError(
            f"{dest} holds vectors {info['vectors']!r} (one tree has one vectors mode)",
            param="vectors",
            hint=f"export into it with `vectors` {info['vectors']}",
        )
    for done, model_id in enumerate(model_ids, 1):
        for table in TABLES:
            _write_partition(
                a, model_id, table, fs, f"{root}/{partition_dir(table, model_id)}", vectors
            )
        unembed = vectors != "none" and a.has_unembedding(model_id)
        if unembed:
            folder = f"{root}/{partition_dir(UNEMBED_DIR, model_id)}"
            fs.makedirs(folder, exist_ok=True)
            _put(fs, f"{folder}/{UNEMBED_FILE}", _npy_bytes(a.unembedding(model_id)))
        info["models"][model_id] = {
            **_model_info(a, model_id),
            "unembed": unembed,
            "format_version": FORMAT_VERSION,
        }
        progress("models", done, len(model_ids))
    info.update(
        format_version=FORMAT_VERSION,  # an older tree's marker was upgraded as it was read
        tables=list(TABLES),
        updated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        library_versions=library_versions(),
    )
    _put(fs, f"{root}/{MARKER}", json.dumps(info, indent=2).encode("utf-8"))
    return {**info, "written": model_ids, "notes": id_overlaps(info, model_ids, dest)}


def _existing_marker(fs: Any, root: str, dest: str) -> dict[str, Any] | None:
    if not fs.exists(root):
        return None
    marker = f"{root}/{MARKER}"
    if not fs.exists(marker):
        if fs.isdir(root) and fs.ls(root):
            raise AtlasError(f"{dest} exists and is neither empty nor an svd-atlas Parquet tree")
        return None
    try:
        with fs.open(marker, "rb") as fh:
            info = load_json(fh.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise AtlasError(f"cannot read {dest}/{MARKER}: {one_line(exc)}") from None
    return check_marker(info, dest)


def _write_partition(
    a: Reader, model_id: str, table: str, fs: Any, folder: str, vectors: str
) -> None:
    """One model's rows of one table, streamed; ``model_id`` lives in the folder name."""
    import pyarrow.parquet as pq  # here, not at CLI start (25 ms)

    from atlas.core.exchange.export import encode_vectors

    query = f"SELECT * FROM {a.relation(model_id, table)} ORDER BY {ROW_ORDER[table]}"
    fs.makedirs(folder, exist_ok=True)
    tmp = f"{folder}/.{uuid.uuid4().hex}.partial"
    writer: pq.ParquetWriter | None = None
    try:
        with fs.open(tmp, "wb") as fh:
            for batch in a.batches(query, None, BATCH_ROWS):
                part = pa.Table.from_batches([batch])
                if PARTITION in part.column_names:
                    part = part.drop_columns([PARTITION])
                if "vector" in part.column_names:
                    part = encode_vectors(part, vectors)
                if writer is None:
                    writer = pq.ParquetWriter(fh, part.schema, compression=COMPRESSION)
                writer.write_table(part)
            if writer is not None:
                writer.close()
        fs.mv(tmp, f"{folder}/{DATA_FILE}")
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def _put(fs: Any, path: str, payload: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    with fs.open(tmp, "wb") as fh:
        fh.write(payload)
    fs.mv(tmp, path)


def _npy_bytes(array: Any) -> bytes:
    import io

    import numpy as np

    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def _model_info(a: Reader, model_id: str) -> dict[str, Any]:
    row = a.sql(
        f"SELECT d_model, n_directions, architecture, source FROM {a.relation(model_id, 'models')}"
    ).to_pylist()[0]
    (ids,) = a.sql(
        f"SELECT min(direction_id) AS lo, max(direction_id) AS hi "
        f"FROM {a.relation(model_id, 'directions')}"
    ).to_pylist()
    return {
        **row,
        "direction_ids": [ids["lo"], ids["hi"]],
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def id_overlaps(info: dict[str, Any], written: list[str], dest: str) -> list[str]:
    """A note for each model just written whose direction ids overlap another model's in the
    tree (models exported from different atlases): a lookup of those ids will be refused."""
    spans = {
        m: entry["direction_ids"]
        for m, entry in info["models"].items()
        if isinstance(entry.get("direction_ids"), list) and None not in entry["direction_ids"]
    }
    notes = []
    for m in written:
        others = [o for o in sorted(spans) if o != m and m in spans
                  and spans[o][0] <= spans[m][1] and spans[m][0] <= spans[o][1]]  # fmt: skip
        if others:
            lo, hi = spans[m]
            notes.append(
                f"the direction ids of {m!r} ({lo}..{hi}) overlap those of "
                f"{', '.join(map(repr, others))} in {dest}: ids are unique only within one atlas, "
                f"so a direction looked up by id there is refused; {SHARED_IDS_HINT}"
            )
    return notes
