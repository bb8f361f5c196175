"""``svd-atlas check --repair``: rebuild a model's FAISS index from its DuckDB vectors.

DuckDB is the source of truth; the index is derived from it, so a missing, stale or damaged
``residual.faiss`` can be rebuilt without the model. The new index is written next to the store,
synced and renamed over the old one, then the manifest's checksum for it is replaced the same
way, all under the atlas's writer lock. Readers that opened the old file keep it. DuckDB data
is only read. Anything else (a damaged ``model.duckdb``, a missing store) is not repairable
here: :mod:`atlas.check` reports what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np

from atlas.check import CheckReport, check_atlas
from atlas.errors import AtlasError
from atlas.layout import MANIFEST, MODEL_DB, RESIDUAL_INDEX, AtlasDir, fsync_tree
from atlas.store import sha256_file, write_index


def repair_atlas(root: str | Path) -> CheckReport:
    """Check, rebuild every repairable index under the writer lock, and check again."""
    atlas_dir = AtlasDir(root)
    first = check_atlas(root)
    to_repair = sorted({f.model_id for f in first.errors if f.repairable and f.model_id})
    if not to_repair:
        return first
    with atlas_dir.writer_lock():
        catalog = atlas_dir.read_catalog()
        for model_id in to_repair:
            if model_id in catalog.models:
                store = atlas_dir.store_path(catalog.models[model_id])
                rebuild_index(store, atlas_dir.new_staging_dir())
    report = check_atlas(root)
    report.repaired = to_repair
    return report


def rebuild_index(store: Path, scratch: Path) -> None:
    """Write ``store``'s residual.faiss again from DuckDB, exact or approximate as ingest chose.

    ``scratch`` is an empty folder on the same file system (a staging folder); it is removed.
    A model without vectors (loaded from a ``--vectors none`` bundle) gets no index.
    """
    path = str(store / MODEL_DB).replace("'", "''")
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{path}' AS m (READ_ONLY)")
        d_model, index_type = con.sql("SELECT d_model, index_type FROM m.models").fetchall()[0]
        rows = con.sql(
            "SELECT direction_id, vector FROM m.directions ORDER BY direction_id"
        ).to_arrow_table()
    finally:
        con.close()
    if rows["vector"].null_count:
        (store / RESIDUAL_INDEX).unlink(missing_ok=True)
        _update_manifest(store, scratch)
        scratch.rmdir()
        return
    ids = rows["direction_id"].to_numpy().astype(np.int64)
    flat = rows["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, np.float32).reshape(len(ids), int(d_model))
    try:
        write_index(scratch, vectors, ids, index_type)
        fsync_tree(scratch)
        os.replace(scratch / RESIDUAL_INDEX, store / RESIDUAL_INDEX)
        _update_manifest(store, scratch)
        fsync_tree(store)
    finally:
        for leftover in scratch.glob("*"):
            leftover.unlink()
        scratch.rmdir()


def _update_manifest(store: Path, scratch: Path) -> None:
    """Replace the manifest's entry for the index (the other checksums stay as they were)."""
    try:
        manifest = json.loads((store / MANIFEST).read_text(encoding="utf-8"))
        members = manifest["members"]
    except (OSError, ValueError, KeyError) as exc:
        raise AtlasError(f"cannot repair {store}: its {MANIFEST} cannot be read ({exc})") from None
    index = store / RESIDUAL_INDEX
    members.pop(RESIDUAL_INDEX, None)
    if index.is_file():
        members[RESIDUAL_INDEX] = {"bytes": index.stat().st_size, "sha256": sha256_file(index)}
    manifest["members"] = dict(sorted(manifest["members"].items()))
    tmp = scratch / MANIFEST
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, store / MANIFEST)
