"""Exporting an atlas as a hive-partitioned Parquet tree that any engine reads directly.

::

    DIR/_svd_atlas.json                           format, version, vectors mode, models
    DIR/<table>/model_id=<url-escaped id>/data_0.parquet

One partition per model and table; ``model_id`` lives in the folder name (hive style), also for
``top_tokens`` and ``top_neurons``, which are partitioned by their direction's model. DuckDB,
Spark, Trino, pandas and pyarrow read it with no svd-atlas code, for example
``read_parquet('DIR/directions/*/*.parquet', hive_partitioning = true)``. ``directions.vector``
is a ``FLOAT[]`` list (Parquet has no fixed-size list); with ``--vectors none`` it is left out.
The tree is written next to DIR and renamed into place when complete.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from atlas.errors import AtlasError
from atlas.handle import Atlas
from atlas.schema import TABLES
from atlas.sources import PARQUET_FORMAT, PARQUET_FORMAT_VERSION, PARQUET_MARKER, PARTITION
from query.exchange.export import COMPRESSION, exporter_versions, resolve_models

_ROWS = {
    "models": "SELECT * FROM models",
    "matrices": "SELECT * FROM matrices",
    "directions": "SELECT * {vector} FROM directions",
    "top_tokens": (
        "SELECT t.*, d.model_id FROM top_tokens t "
        "JOIN (SELECT direction_id, model_id FROM directions) d USING (direction_id)"
    ),
    "top_neurons": (
        "SELECT t.*, d.model_id FROM top_neurons t "
        "JOIN (SELECT direction_id, model_id FROM directions) d USING (direction_id)"
    ),
    "vocab": "SELECT * FROM vocab",
    "coherence_null": "SELECT * FROM coherence_null",
    "token_bags": (
        "SELECT t.*, d.model_id FROM token_bags t "
        "JOIN (SELECT direction_id, model_id FROM directions) d USING (direction_id)"
    ),
}
_ORDER = {
    "models": "model_id",
    "matrices": "matrix_id",
    "directions": "direction_id",
    "top_tokens": "direction_id, polarity DESC, rank",
    "top_neurons": "direction_id, rank",
    "vocab": "token_id",
    "coherence_null": "scope, sample",
    "token_bags": "token_norm, direction_id",
}


def export_parquet_tree(
    a: Atlas, model_ids: list[str], out: Path, vectors: str = "f32"
) -> dict[str, Any]:
    """Write ``model_ids`` of ``a`` (all when empty) as a Parquet tree at ``out``."""
    if vectors not in ("f32", "none"):
        raise AtlasError("a Parquet tree stores vectors as f32 or not at all (--vectors f32|none)")
    model_ids = resolve_models(a, model_ids)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AtlasError(f"{out} exists and is not an empty folder")
    if not out.parent.is_dir():
        raise AtlasError(f"folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.partial")
    tmp.mkdir()
    try:
        a.con.execute(f"CREATE OR REPLACE TEMP TABLE _export_ids ({PARTITION} VARCHAR)")
        a.con.executemany("INSERT INTO _export_ids VALUES (?)", [[m] for m in model_ids])
        for table in TABLES:
            _copy_table(a, table, tmp / table, vectors)
        info = {
            "format": PARQUET_FORMAT,
            "format_version": PARQUET_FORMAT_VERSION,
            "vectors": vectors,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "library_versions": exporter_versions(),
            "models": _model_info(a, model_ids),
            "tables": list(TABLES),
        }
        (tmp / PARQUET_MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        a.con.execute("DROP TABLE IF EXISTS _export_ids")
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _copy_table(a: Atlas, table: str, target: Path, vectors: str) -> None:
    vector = "EXCLUDE (vector)" if vectors == "none" else ""
    rows = _ROWS[table].format(vector=vector)
    query = (
        f"SELECT * FROM ({rows}) WHERE {PARTITION} IN (SELECT {PARTITION} FROM _export_ids) "
        f"ORDER BY {_ORDER[table]}"
    )
    path = str(target).replace("'", "''")
    a.con.execute(
        f"COPY ({query}) TO '{path}' "
        f"(FORMAT parquet, PARTITION_BY ({PARTITION}), COMPRESSION {COMPRESSION})"
    )


def _model_info(a: Atlas, model_ids: list[str]) -> dict[str, Any]:
    rows = a.sql(
        "SELECT model_id, d_model, n_directions, architecture, source FROM models "
        "WHERE model_id IN (SELECT model_id FROM _export_ids) ORDER BY model_id"
    ).to_pylist()
    return {r.pop("model_id"): r for r in rows}
