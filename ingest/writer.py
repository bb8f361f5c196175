"""Stage 4 and 5: writing one model's store (DuckDB tables, FAISS index, manifest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from atlas.core import store as store_io
from atlas.core.layout import MODEL_DB
from atlas.core.store import write_index, write_manifest, write_unembedding
from ingest.assemble import AtlasRows

__all__ = [
    "record_stage_seconds",
    "write_manifest",
    "write_residual_index",
    "write_tables",
    "write_unembedding",
]


def write_tables(
    store: Path, model_row: dict[str, Any], rows: AtlasRows, vocab: pa.Table, d_model: int
) -> None:
    """Create the schema and bulk-insert every table through Arrow, in one transaction."""
    tables: dict[str, pa.Table | None] = {
        "models": _models_table(model_row),
        "matrices": rows.matrices,
        "directions": rows.directions,
        "top_tokens": rows.top_tokens,
        "top_neurons": rows.top_neurons,
        "vocab": vocab,
        "coherence_null": rows.coherence_null,
    }
    store_io.write_tables(store, tables, d_model)


def write_residual_index(store: Path, rows: AtlasRows, index_type: str) -> None:
    """The residual-space cosine index of one model; ids = direction_id."""
    write_index(store, rows.vectors, rows.direction_ids, index_type)


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
