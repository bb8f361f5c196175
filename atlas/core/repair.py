"""``svd-atlas check --repair``: fix what can be fixed without the model.

DuckDB is the source of truth; everything else a store holds is derived from it or describes
it. Under the atlas's writer lock, for each problem ``atlas.core.check`` marks repairable:

- a missing, stale or damaged FAISS index (its ``residual-NNNN.faiss`` shards) is rebuilt
  from DuckDB's vectors, and missing or damaged hit rows (``atlas.core.hit_rows``) are written
  again from DuckDB's tables;
- a missing or unreadable ``manifest.json`` is recomputed, once the check has verified the data
  itself (DuckDB opens, row counts and ids agree with the catalog, the index matches DuckDB);
- a lost or unreadable ``catalog.json`` is rebuilt from the stores' manifests, with the id
  counters past every id any store on disk holds, so ids stay unique;
- a model whose store cannot be read at all is taken out of the catalog (its ids stay retired),
  so that every other model works and ``check`` passes; re-ingesting brings it back;
- an atlas of an older format version (1 to 3) is upgraded (``atlas.core.upgrade``), first.

Files are replaced by writing a new one next to them and renaming it over the old, so readers
that opened the old one keep it. DuckDB data is only read (an upgrade writes new stores beside
the old ones).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from atlas.core.check import (
    RAISE_COUNTERS,
    REBUILD_CATALOG,
    REBUILD_HITS,
    REBUILD_INDEX,
    REWRITE_MANIFEST,
    UNPUBLISH,
    UPGRADE,
    CheckReport,
    check_atlas,
)
from atlas.core.errors import AtlasError, one_line
from atlas.core.hit_rows import HIT_FILES, HIT_ROWS, write_hit_rows
from atlas.core.indexes import is_index_file, shard_files
from atlas.core.jsondata import load_json
from atlas.core.layout import (
    CATALOG,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_DB,
    STORE_NAME,
    AtlasDir,
    Catalog,
    CatalogEntry,
    fsync_tree,
)
from atlas.core.sqlguard import raise_interrupt, sql_string
from atlas.core.store import (
    with_members,
    write_index_from_database,
    write_manifest,
)
from atlas.core.upgrade import UNVERSIONED, upgrade_atlas


def repair_atlas(root: str | Path) -> CheckReport:
    """Check, repair what is repairable, and check again (three times at most: a rebuilt
    catalog lets its models be checked, an upgraded atlas too, and repaired, in turn)."""
    atlas_dir = AtlasDir(root)
    report = check_atlas(root)
    done: list[str] = []
    for _ in range(3):
        actions = {(f.repair, f.model_id) for f in report.errors if f.repair is not None}
        if not actions:
            break
        if (UPGRADE, None) in actions:
            done += upgrade_atlas(atlas_dir)  # under the writer lock itself
        else:
            with atlas_dir.writer_lock(repairing=True):
                done += _repair(atlas_dir, actions)
        report = check_atlas(root)
    report.repaired = done
    return report


def _repair(atlas_dir: AtlasDir, actions: set[tuple[str, str | None]]) -> list[str]:
    done: list[str] = []
    if (REBUILD_CATALOG, None) in actions:
        done.append(rebuild_catalog(atlas_dir))
    else:
        catalog = atlas_dir.read_catalog()
        if (RAISE_COUNTERS, None) in actions:
            done.append(raise_counters(atlas_dir, catalog))
        broken = {m for a, m in actions if a == UNPUBLISH and m is not None and m in catalog.models}
        for name in sorted(broken):
            del catalog.models[name]
            done.append(f"{name}  taken out of the catalog: its store cannot be read")
        if broken:
            atlas_dir.write_catalog(catalog)
        for action, model_id in sorted(actions, key=str):
            if model_id is None or model_id in broken or model_id not in catalog.models:
                continue
            entry = catalog.models[model_id]
            store = atlas_dir.store_path(entry)
            if action == REWRITE_MANIFEST:
                rewrite_manifest(store, model_id, entry)
                done.append(f"{model_id}  {MANIFEST} recomputed from the verified data")
            elif action == REBUILD_INDEX:
                with atlas_dir.staging() as scratch:
                    rebuild_index(store, scratch)
                done.append(f"{model_id}  the FAISS index rebuilt from DuckDB")
            elif action == REBUILD_HITS:
                with atlas_dir.staging() as scratch:
                    rebuild_hit_rows(store, scratch)
                done.append(f"{model_id}  {HIT_ROWS} written again from DuckDB")
    return done


def rebuild_hit_rows(store: Path, scratch: Path) -> None:
    """Write ``store``'s hit rows again from DuckDB (``hit_rows.write_hit_rows``) and put them
    in place of the old ones; ``scratch`` as for :func:`rebuild_index`."""
    write_hit_rows(store / MODEL_DB, scratch)
    fsync_tree(scratch)
    for name in HIT_FILES:
        os.replace(scratch / name, store / name)
    _replace_members(store, scratch, lambda name: name in HIT_FILES)
    fsync_tree(store)


def rebuild_index(store: Path, scratch: Path) -> None:
    """Write ``store``'s index shards again from DuckDB (``store.write_index_from_database``)
    and put them in place of the old ones.

    ``scratch`` is an empty folder on the same file system (a staging folder).
    """
    write_index_from_database(store / MODEL_DB, scratch)
    fsync_tree(scratch)
    new = {p.name for p in scratch.iterdir() if is_index_file(p.name)}
    for name in sorted(new):
        os.replace(scratch / name, store / name)
    for old in shard_files(store):
        if old.name not in new:
            old.unlink()
    _replace_members(store, scratch, is_index_file)
    fsync_tree(store)


def _replace_members(store: Path, scratch: Path, names: Callable[[str], bool]) -> None:
    """Replace the manifest's entries for the rebuilt files (the other checksums stay as they
    were)."""
    try:
        manifest = load_json((store / MANIFEST).read_text(encoding="utf-8"))
        with_members(manifest, store, names)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = one_line(exc)
        message = f"cannot repair {store}: its {MANIFEST} cannot be read ({reason})"
        raise AtlasError(message) from None
    _write_json(store / MANIFEST, manifest, scratch)


def rewrite_manifest(store: Path, model_id: str, entry: CatalogEntry) -> None:
    """Recompute a lost manifest (the check has verified the data it describes)."""
    from atlas.core.publish import IdRange, store_record

    con = _open_store(store)
    try:
        spec = con.sql("SELECT spec FROM m.models").fetchall()[0][0]
        has_vectors = not con.sql(
            "SELECT count(*) FROM m.directions WHERE vector IS NULL"
        ).fetchall()[0][0]
    finally:
        con.close()
    ids = IdRange(entry.first_direction_id, entry.n_directions, entry.first_matrix_id,
                  entry.n_matrices)  # fmt: skip
    record = store_record(model_id, ids, spec)
    if not has_vectors:
        record["vectors"] = "none"
    (store / MANIFEST).unlink(missing_ok=True)
    write_manifest(store, record)
    fsync_tree(store)


def raise_counters(atlas_dir: AtlasDir, catalog: Catalog) -> str:
    """Move the catalog's id counters (and ``.reserved``'s) past every id on disk: the
    catalog's models, the reservations and every store's recorded ids, so that no id a store
    holds, or a replaced one held, is handed out again."""
    directions, matrices = atlas_dir.read_reserved()
    ends = [_recorded_ids(store) for store in atlas_dir.orphan_stores()]
    ends += [(e.first_direction_id + e.n_directions, e.first_matrix_id + e.n_matrices)
             for e in catalog.models.values()]  # fmt: skip
    catalog.next_direction_id = max([catalog.next_direction_id, directions, *(d for d, _ in ends)])
    catalog.next_matrix_id = max([catalog.next_matrix_id, matrices, *(m for _, m in ends)])
    atlas_dir.write_catalog(catalog)
    atlas_dir.write_reserved(catalog.next_direction_id, catalog.next_matrix_id)
    return (
        f"-  {CATALOG}: id counters raised past every id on disk (next direction "
        f"{catalog.next_direction_id:,}, next matrix {catalog.next_matrix_id:,})"
    )


def rebuild_catalog(atlas_dir: AtlasDir) -> str:
    """A new catalog from the stores on disk (see the module notes); returns what it did."""
    found: dict[str, tuple[CatalogEntry, str]] = {}
    next_direction, next_matrix = atlas_dir.read_reserved()
    skipped = []
    for store in atlas_dir.orphan_stores():
        recorded = _recorded_ids(store)  # an unreadable store's ids stay taken too
        next_direction = max(next_direction, recorded[0])
        next_matrix = max(next_matrix, recorded[1])
        described = _describe_store(store)
        if described is None or not STORE_NAME.fullmatch(f"store/{store.name}"):
            skipped.append(store.name)
            continue
        model_id, entry = described
        entry.store = f"store/{store.name}"
        next_direction = max(next_direction, entry.first_direction_id + entry.n_directions)
        next_matrix = max(next_matrix, entry.first_matrix_id + entry.n_matrices)
        # of two stores of one model (a replaced one not yet swept), the newer ids win
        if (
            model_id not in found
            or entry.first_direction_id > found[model_id][0].first_direction_id
        ):
            found[model_id] = (entry, store.name)
    catalog = Catalog(
        models={m: e for m, (e, _) in sorted(found.items())},
        next_direction_id=next_direction,
        next_matrix_id=next_matrix,
        version=min((_store_version(atlas_dir.store_path(e)) for e, _ in found.values()),
                    default=FORMAT_VERSION),
    )  # fmt: skip
    atlas_dir.write_catalog(catalog)
    note = f" ({len(skipped)} unreadable store(s) left out)" if skipped else ""
    return f"-  catalog.json rebuilt from {len(found)} store(s){note}"


def _store_version(store: Path) -> int:
    """The atlas format version a store was written in: its manifest says so from version 2
    on (a catalog rebuilt over older stores is of the older version, and is upgraded next)."""
    try:
        version = load_json((store / MANIFEST).read_text(encoding="utf-8"))["format_version"]
        return version if isinstance(version, int) else UNVERSIONED
    except (OSError, ValueError, KeyError, TypeError):
        return UNVERSIONED


def _recorded_ids(store: Path) -> tuple[int, int]:
    """The ends of the id ranges a store's manifest records (0, 0 when it has none)."""
    try:
        ids = load_json((store / MANIFEST).read_text(encoding="utf-8"))["ids"]
        return (
            int(ids["first_direction_id"]) + int(ids["n_directions"]),
            int(ids["first_matrix_id"]) + int(ids["n_matrices"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def _describe_store(store: Path) -> tuple[str, CatalogEntry] | None:
    """The model id and id ranges of a readable store (from DuckDB, which the ranges must
    match), or None."""
    try:
        con = _open_store(store)
    except duckdb.Error as exc:
        raise_interrupt(exc)
        return None
    try:
        (model_id,) = con.sql("SELECT model_id FROM m.models").fetchall()[0]
        d_lo, d_n = con.sql("SELECT min(direction_id), count(*) FROM m.directions").fetchall()[0]
        m_lo, m_n = con.sql("SELECT min(matrix_id), count(*) FROM m.matrices").fetchall()[0]
    except (duckdb.Error, IndexError) as exc:
        raise_interrupt(exc)
        return None
    finally:
        con.close()
    return model_id, CatalogEntry("", int(d_lo or 0), int(d_n), int(m_lo or 0), int(m_n))


def _open_store(store: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {sql_string(str(store / MODEL_DB))} AS m (READ_ONLY)")
    except duckdb.Error:
        con.close()
        raise
    return con


def _write_json(path: Path, data: Any, scratch: Path) -> None:
    tmp = scratch / path.name
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
