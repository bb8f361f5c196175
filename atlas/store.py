"""Writing one model store: its DuckDB tables, its FAISS index and its checksum manifest.

Shared by the ingest job and by bundle loading, which both build a store under ``.staging``
and then publish it (see ``atlas.layout``). Kept free of torch so that loading stays light.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from atlas.layout import MANIFEST, MODEL_DB, RESIDUAL_INDEX
from atlas.schema import create_statements

TABLE_ORDER = ("models", "matrices", "directions", "top_tokens", "top_neurons")


def write_tables(
    store: Path, tables: dict[str, pa.Table], d_model: int, with_vectors: bool = True
) -> None:
    """Create the schema and bulk-insert every table through Arrow, in one transaction.

    ``with_vectors=False`` makes ``directions.vector`` nullable: a model loaded from a bundle
    exported without vectors keeps NULL there (and has no FAISS index).
    """
    con = duckdb.connect(str(store / MODEL_DB))
    try:
        con.execute("BEGIN")
        for ddl in create_statements(d_model):
            con.execute(ddl)
        if not with_vectors:
            con.execute("ALTER TABLE directions ALTER COLUMN vector DROP NOT NULL")
        for name in TABLE_ORDER:
            con.register("incoming", tables[name])
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def write_index(store: Path, vectors: np.ndarray, ids: np.ndarray) -> None:
    """The residual-space cosine index: unit vectors, inner product, ids = direction_id."""
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    faiss.write_index(index, str(store / RESIDUAL_INDEX))


def write_manifest(
    store: Path, model_id: str, counts: dict[str, int], extra: dict[str, Any] | None = None
) -> None:
    """Checksums of every file in the store, so that copies and bundles can be verified."""
    members = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(store.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"model_id": model_id, "counts": counts, **(extra or {}), "members": members}
    (store / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
