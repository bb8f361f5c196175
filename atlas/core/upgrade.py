"""The one upgrade of an atlas directory: from format version 1, 2 or 3 to 4 (``svd-atlas
check --repair``).

Version 1 grew without changing its number, so a version 1 store may lack what later ones have:

- tables added to the contract after the first release (``vocab``, ``token_bags``,
  ``coherence_null``) and the column ``models.weight_dtype``;
- its index as one ``residual.faiss`` file rather than ``residual-NNNN.faiss`` shards, or as an
  HNSW index (``models.index_type = 'hnsw'``, the first release's choice above
  ``--exact-max``).

Version 2 has all of them, always. Version 3 added what needs the weights (QK circuits,
composition, eigenvalue positivity, the embedding readout: ``atlas.core.contents``), which an
upgrade cannot compute: an upgraded model keeps its rows, with ``models.format_version`` saying
which version computed them, so that what shows circuits refuses it with one line that says to
re-ingest it. Version 4 added each store's hit rows (``atlas.core.hit_rows``), derived from its
tables.

The upgrade writes each model's store again under ``.staging``. A store of version 3 keeps its
files (hard links where the file system allows: a published file never changes) and gains its
hit rows. An older one is written anew: the contract's schema, the old rows copied in by column
name (what a store lacks is NULL or empty, ``top_tokens.basis`` is ``unembed``; ``token_bags``
is derived again from ``top_tokens`` and ``vocab``, as ingest derives it, and the hit rows as
every writer derives them), an HNSW model given the index type ingest chooses above
``--exact-max``, the index rebuilt from DuckDB's vectors, the unembedding and the manifest's
record kept. One new catalog then publishes every store at once (``AtlasDir.publish_many``),
under the writer lock. Until that rename the old atlas is exactly as it was: an upgrade that
stops anywhere changes nothing, and its staging folders are swept later; the old stores stay
for readers that still use them until a later sweep. A store that cannot be read at all is
left out of the new catalog, its ids retired, as ``check --repair`` does for any version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import duckdb

from atlas.core.contents import added_columns_sql
from atlas.core.contract import TABLES
from atlas.core.errors import one_line
from atlas.core.hit_rows import HIT_FILES, write_hit_rows
from atlas.core.indexes import APPROXIMATE, EXACT, index_type_for
from atlas.core.jsondata import load_json
from atlas.core.layout import (
    FORMAT_VERSION,
    MANIFEST,
    MODEL_DB,
    UNEMBED,
    AtlasDir,
    CatalogEntry,
    fsync_tree,
)
from atlas.core.publish import IdRange, store_record
from atlas.core.sqlguard import raise_interrupt, sql_string
from atlas.core.store import (
    TABLE_ORDER,
    TableWriter,
    with_members,
    write_index_from_database,
    write_manifest,
    writing_store,
)

UNVERSIONED = 1  # a store whose manifest names no format version was written by version 1
HIT_ROWS_ADDED = 4  # the version whose stores first held hit rows: all an older 3 lacks
FIRST_RELEASE_TABLES = TABLES[:5]  # what every version 1 store has
INDEX_TYPES = (EXACT, APPROXIMATE)  # what version 2 writes in models.index_type


def upgrade_atlas(atlas_dir: AtlasDir) -> list[str]:
    """Upgrade the atlas at ``atlas_dir`` from an older format version to the current one
    (see the module notes); returns what was done, one line per model (nothing for an atlas
    of the current version)."""
    with atlas_dir.writer_lock(), writing_store(atlas_dir.root):
        catalog = atlas_dir.read_catalog(upgrading=True)
        if catalog.version == FORMAT_VERSION:
            return []
        done, staged = [], []
        with contextlib.ExitStack() as stack:
            for model_id, entry in sorted(catalog.models.items()):
                old = atlas_dir.store_path(entry)
                if problem := _unreadable(old, model_id):
                    del catalog.models[model_id]
                    done.append(f"{model_id}  taken out of the catalog: its store {problem}")
                    continue
                staging = stack.enter_context(atlas_dir.staging())
                upgrade_store(old, staging, model_id, entry, catalog.version)
                fsync_tree(staging)
                ids = CatalogEntry("", entry.first_direction_id, entry.n_directions,
                                   entry.first_matrix_id, entry.n_matrices)  # fmt: skip
                staged.append((model_id, staging, ids))
                done.append(f"{model_id}  store upgraded to atlas format {FORMAT_VERSION}")
            atlas_dir.sweep(catalog)
            previous, catalog.version = catalog.version, FORMAT_VERSION
            atlas_dir.publish_many(staged, catalog)
    return [f"-  atlas format {previous} upgraded to {FORMAT_VERSION}", *done]


def upgrade_store(old: Path, new: Path, model_id: str, entry: CatalogEntry, version: int) -> None:
    """Write the store ``old`` of format ``version`` as a current one in the empty folder
    ``new``."""
    if version == HIT_ROWS_ADDED - 1:
        add_hit_rows(old, new, model_id, entry)
        return
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {sql_string(str(old / MODEL_DB))} AS old (READ_ONLY)")
        present: dict[str, set[str]] = {}
        for table, column in con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = 'old'"
        ).fetchall():
            present.setdefault(table, set()).add(column)
        row = "SELECT d_model, spec, n_directions FROM old.models"
        d_model, spec, n_directions = con.sql(row).fetchall()[0]
        query = "SELECT count(*) FROM old.directions WHERE vector IS NULL"
        (n_null,) = con.sql(query).fetchall()[0]
    finally:
        con.close()
    writer = TableWriter(new, int(d_model), with_vectors=not n_null)
    try:
        writer.con.execute(f"ATTACH {sql_string(str(old / MODEL_DB))} AS old (READ_ONLY)")
        writer.con.execute("BEGIN")
        for table in TABLE_ORDER:
            if table in present:
                rows = _rows_of(table, int(n_directions), version, present[table])
                writer.con.execute(f"INSERT INTO {table} BY NAME {rows}")
        writer.con.execute("COMMIT")
        writer.con.execute("DETACH old")
        writer.finish()
    except BaseException:
        writer.close()
        raise
    write_index_from_database(new / MODEL_DB, new)
    if (old / UNEMBED).is_file():
        _link_or_copy(old / UNEMBED, new / UNEMBED)
    write_manifest(new, _record(old, model_id, entry, spec, has_vectors=not n_null))


def add_hit_rows(old: Path, new: Path, model_id: str, entry: CatalogEntry) -> None:
    """A store of version 3 as version 4: its files as they are (linked), and its hit rows
    derived from its tables. The manifest keeps its entries for the old files, so damage
    they had is still the damage ``check`` finds."""
    for path in old.iterdir():
        if path.is_file() and path.name != MANIFEST and not path.name.startswith("."):
            _link_or_copy(path, new / path.name)
    write_hit_rows(new / MODEL_DB, new)
    try:
        manifest = load_json((old / MANIFEST).read_text(encoding="utf-8"))
        with_members(manifest, new, lambda name: name in HIT_FILES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # recomputed instead
        con = duckdb.connect(":memory:")
        try:
            con.execute(f"ATTACH {sql_string(str(new / MODEL_DB))} AS m (READ_ONLY)")
            (spec,) = con.sql("SELECT spec FROM m.models").fetchall()[0]
            query = "SELECT count(*) FROM m.directions WHERE vector IS NULL"
            (n_null,) = con.sql(query).fetchall()[0]
        finally:
            con.close()
        write_manifest(new, _record(old, model_id, entry, spec, has_vectors=not n_null))
        return
    manifest["format_version"] = FORMAT_VERSION
    (new / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _rows_of(table: str, n_directions: int, version: int, columns: set[str]) -> str:
    """The old store's rows of ``table`` (whose columns are ``columns``), as the current
    contract has them: the columns version 3 added as an older model has them
    (``atlas.core.contents``), and an HNSW model, which was above ``--exact-max``, with the
    index ingest builds there today (approximate, unless too small to train)."""
    added = added_columns_sql(table, version, columns)
    if table != "models":
        return f"SELECT *{added} FROM old.{table}"
    kept = ", ".join(f"'{t}'" for t in INDEX_TYPES)
    above_exact_max = index_type_for(n_directions, exact_max=0)
    return (
        f"SELECT * REPLACE (CASE WHEN index_type IN ({kept}) THEN index_type "
        f"ELSE '{above_exact_max}' END AS index_type){added} FROM old.models"
    )


def _record(
    old: Path, model_id: str, entry: CatalogEntry, spec: str, has_vectors: bool
) -> dict[str, Any]:
    """What the old manifest says about the store's place (model id, spec, ids, vectors,
    provenance), or, where it cannot be read, the same from the catalog and the store."""
    try:
        manifest = load_json((old / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise TypeError("not an object")
    except (OSError, ValueError, TypeError):
        ids = IdRange(entry.first_direction_id, entry.n_directions, entry.first_matrix_id,
                      entry.n_matrices)  # fmt: skip
        record = store_record(model_id, ids, spec)
        return record if has_vectors else {**record, "vectors": "none"}
    derived = ("counts", "members", "format_version")
    return {key: value for key, value in manifest.items() if key not in derived}


def _unreadable(store: Path, model_id: str) -> str | None:
    """Why an older store cannot be upgraded (it cannot be opened, lacks a table every
    version 1 store has, or holds another model), or None."""
    if not (store / MODEL_DB).is_file():
        return "is missing"
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {sql_string(str(store / MODEL_DB))} AS old (READ_ONLY)")
        present = {
            name
            for (name,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'old'"
            ).fetchall()
        }
        missing = [t for t in FIRST_RELEASE_TABLES if t not in present]
        if missing:
            return f"has no {missing[0]} table"
        rows = con.execute("SELECT model_id FROM old.models").fetchall()
        if rows != [(model_id,)]:
            return f"holds {[r[0] for r in rows][:3]!r}, not {model_id!r}"
    except duckdb.Error as exc:
        raise_interrupt(exc)
        return f"cannot be read ({one_line(exc, 120)})"
    finally:
        con.close()
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (a published file is never changed in place),
    else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
