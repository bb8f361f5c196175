"""Stage 4 and 5: writing one model's store (DuckDB tables, FAISS index, manifest)."""

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
from ingest.assemble import AtlasRows

TABLE_ORDER = (
    "models",
    "matrices",
    "directions",
    "top_tokens",
    "top_neurons",
    "coherence_null",
)


def write_tables(store: Path, model_row: dict[str, Any], rows: AtlasRows, d_model: int) -> None:
    """Create the schema and bulk-insert every table through Arrow, in one transaction."""
    tables: dict[str, pa.Table | None] = {
        "models": _models_table(model_row),
        "matrices": rows.matrices,
        "directions": rows.directions,
        "top_tokens": rows.top_tokens,
        "top_neurons": rows.top_neurons,
        "coherence_null": rows.coherence_null,
    }
    con = duckdb.connect(str(store / MODEL_DB))
    try:
        con.execute("BEGIN")
        for ddl in create_statements(d_model):
            con.execute(ddl)
        for name in TABLE_ORDER:
            if tables[name] is None:
                continue
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


def write_manifest(store: Path, model_id: str, counts: dict[str, int]) -> None:
    """Checksums of every file in the store, so that copies and bundles can be verified."""
    members = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(store.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"model_id": model_id, "counts": counts, "members": members}
    (store / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _models_table(row: dict[str, Any]) -> pa.Table:
    json_columns = ("processing_applied", "skipped", "versions", "stage_seconds")
    encoded = {k: json.dumps(v) if k in json_columns else v for k, v in row.items()}
    return pa.table({k: [v] for k, v in encoded.items()})


def record_stage_seconds(store: Path, seconds: dict[str, float]) -> None:
    """Store the final per-stage times (the row was written before the last stages ended)."""
    con = duckdb.connect(str(store / MODEL_DB))
    try:
        con.execute("UPDATE models SET stage_seconds = ?", [json.dumps(seconds)])
        con.execute("CHECKPOINT")
    finally:
        con.close()
