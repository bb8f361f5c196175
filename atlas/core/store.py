"""Writing one model store: its DuckDB tables, its FAISS index and its checksum manifest.

Shared by the ingest job and by bundle loading, which both build a store under ``.staging``
and then publish it (see ``atlas.core.layout``). Kept free of torch so that loading stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from atlas.core.contract import TABLES
from atlas.core.errors import AtlasError, one_line
from atlas.core.hit_rows import write_hit_rows
from atlas.core.indexes import SHARD_FILE, build_index
from atlas.core.indexes import write_index as write_faiss
from atlas.core.layout import FORMAT_VERSION, MANIFEST, MODEL_DB, UNEMBED
from atlas.core.sqlguard import sql_string
from atlas.core.token_space import BUILD_TOKEN_BAGS
from atlas.core.vectors import vector_matrix

# The order each table's rows are stored in: by direction, the rows a hit needs together;
# token_bags by token string, so that a lookup of a few strings skips most of it (its own
# build query orders it so, and the copy keeps that order).
CLUSTER_ORDER = {
    "directions": "direction_id",
    "top_tokens": "direction_id, basis, polarity, rank",
    "top_neurons": "direction_id, rank",
    "token_bags": "token_norm, direction_id",
}
# Rows per row group, chosen per table by its size (DuckDB's default: 122,880). DuckDB skips a
# row group whose zone map rules it out but reads every column of one it cannot, and it walks
# every group's zone map: small groups make reading ``k`` directions' rows read about ``k``
# groups (2 ms for ten hits at 1e5 directions, against 35 ms with the default), while too many
# make the walk itself the cost (13 ms for ten hits in 16,275 groups of 2,048 at 1e6
# directions, 5 ms in groups of 16,384). So a table gets about ``ROW_GROUPS`` groups, of a power
# of two rows between these bounds; a table of 1e6 directions' vectors keeps the smallest.
ROW_GROUP_ROWS = (2048, 65536)
ROW_GROUPS = 2048


def row_group_rows(n_rows: int) -> int:
    """Rows per row group for a table of ``n_rows`` rows (see ``ROW_GROUP_ROWS``)."""
    low, high = ROW_GROUP_ROWS
    return min(high, max(low, 1 << round(math.log2(max(1, n_rows / ROW_GROUPS)))))


# The tables whose row counts a manifest records.
COUNTED = tuple(t for t in TABLES if t != "models")
# Written through Arrow; token_bags is derived from top_tokens and vocab inside DuckDB.
TABLE_ORDER = (
    "models",
    "matrices",
    "directions",
    "top_tokens",
    "top_neurons",
    "vocab",
    "coherence_null",
    "composition",
    "composition_pairs",
)


@contextlib.contextmanager
def writing_store(atlas_root: Path) -> Iterator[None]:
    """Turn a failure to write a new store (a full disk, a file size limit, DuckDB's I/O
    errors) into one clear line. Callers drop their staging folder, so the atlas is unchanged."""
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        raise AtlasError(
            f"writing to {atlas_root} failed: DuckDB ran out of memory ({one_line(exc, 120)}). "
            "The atlas is unchanged"
        ) from None
    except (OSError, duckdb.Error) as exc:
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:  # a failed checkpoint says what failed last, after pages of context
            reason = one_line(str(exc).rpartition("Original error: ")[2])
        raise AtlasError(
            f"writing to {atlas_root} failed ({reason}); is the disk full? The atlas is unchanged"
        ) from None


class TableWriter:
    """A new store's DuckDB file, written a batch of rows at a time through Arrow.

    Rows land first in an in-memory database (``unsorted``, the session's default catalog, so
    callers' unqualified statements land there too) and are copied into the store once, at
    :meth:`finish`, each table in its ``CLUSTER_ORDER``: a direction's rows (its metadata,
    vector, tokens and neurons) sit together in direction id order, so that reading the rows of
    ``k`` directions touches about ``k`` row ranges (DuckDB skips the rest by its zone maps),
    where the order of ingest (kind by kind within each block) would spread them over the whole
    table. Past ``memory_limit`` DuckDB moves the staged rows to its temporary folder, so
    staging in memory stays bounded; it saves compressing and checkpointing rows that are
    read once (MiniLM: a bundle loads in 3.3 s instead of 4.5, an ingest takes 1.2 s less).

    ``with_vectors=False`` makes ``directions.vector`` nullable: a model loaded from a bundle
    exported without vectors keeps NULL there (and has no FAISS index). ``memory_limit`` bounds
    DuckDB's buffers (it spills to disk beyond), so a model of any size writes in bounded
    memory.
    """

    def __init__(
        self,
        store: Path,
        d_model: int,
        with_vectors: bool = True,
        memory_limit: str = "1GB",
        threads: int | None = None,
    ):
        from atlas.core.schema import create_statements  # SQLAlchemy: only where stores are written

        config: dict[str, Any] = {"memory_limit": memory_limit}
        if threads is not None:  # a writer beside other work keeps to its share of the cores
            config["threads"] = threads
        # DuckDB spills past ``memory_limit`` into a folder beside the store, as it does for
        # a database it was connected to (and removes it on closing)
        config["temp_directory"] = str(store / f"{MODEL_DB}.tmp")
        self.store = store
        self.con = duckdb.connect(":memory:", config=config)
        try:
            self.path = sql_string(str(store / MODEL_DB))
            self.con.execute(f"ATTACH {self.path} AS store")
            self.con.execute("ATTACH ':memory:' AS unsorted")
            for catalog in ("store", "unsorted"):
                self.con.execute(f"USE {catalog}")
                self.con.execute("BEGIN")
                for ddl in create_statements(d_model):
                    self.con.execute(ddl)
                if not with_vectors:
                    self.con.execute("ALTER TABLE directions ALTER COLUMN vector DROP NOT NULL")
                self.con.execute("COMMIT")
        except BaseException:
            self.close()
            raise

    def append(self, tables: dict[str, pa.Table | None]) -> None:
        """Insert rows of several tables in one transaction (``None``: nothing to insert)."""
        self.con.execute("BEGIN")
        for name in TABLE_ORDER:
            if tables.get(name) is None:
                continue
            self.con.register("incoming", tables[name])
            self.con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
            self.con.unregister("incoming")
        self.con.execute("COMMIT")

    def finish(self) -> None:
        """Derive the token-space bags, copy every table into the store in its cluster order,
        flush to disk and close; then derive the store's hit rows from it
        (``atlas.core.hit_rows``): every writer of a store (ingest, load, upgrade) comes here."""
        try:
            self.con.execute(BUILD_TOKEN_BAGS)
            for table in TABLES:
                # the store attached again with this table's row group size (an option of the
                # attachment, not of a table); the staged store is published only when whole
                counted = self.con.execute(f"SELECT count(*) FROM unsorted.{table}").fetchone()
                size = row_group_rows(counted[0] if counted else 0)
                self.con.execute("USE memory")
                self.con.execute("DETACH store")
                self.con.execute(f"ATTACH {self.path} AS store (ROW_GROUP_SIZE {size})")
                order = CLUSTER_ORDER.get(table)
                self.con.execute(
                    f"INSERT INTO store.{table} SELECT * FROM unsorted.{table}"
                    + (f" ORDER BY {order}" if order else "")
                )
            self.con.execute("DETACH unsorted")
            self.con.execute("CHECKPOINT store")
        finally:
            self.close()
        write_hit_rows(self.store / MODEL_DB, self.store)

    def close(self) -> None:
        self.con.close()


def write_tables(
    store: Path, tables: dict[str, pa.Table | None], d_model: int, with_vectors: bool = True
) -> None:
    """Create the schema and bulk-insert every table through Arrow (a bundle's model)."""
    writer = TableWriter(store, d_model, with_vectors)
    try:
        writer.append(tables)
        writer.finish()
    except BaseException:
        writer.close()
        raise


SHARD_BYTES = 256 << 20  # vectors per index shard: few shards, in bounded memory


class IndexShards:
    """A store's index, written as shards of at least SHARD_BYTES of vectors (the last one
    smaller), each holding whole layers.

    Layers are added in order, each with its vectors in direction_id order; a shard is
    written as soon as it is full. Ingest (block by block), bundle loads and repairs (layer by
    layer from DuckDB) all write through this, so the same data makes the same files, in
    memory of one shard and one layer.
    """

    def __init__(self, store: Path, index_type: str):
        self.store, self.index_type = store, index_type
        self.count = 0  # shards written
        self._vectors: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._bytes = 0

    def add_layer(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._vectors.append(vectors)
        self._ids.append(ids.astype(np.int64))
        self._bytes += vectors.nbytes
        if self._bytes >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered as the next shard (at the end, or when full)."""
        if not self._vectors:
            return
        vectors, ids = np.concatenate(self._vectors), np.concatenate(self._ids)
        self._vectors, self._ids, self._bytes = [], [], 0
        index = build_index(vectors, ids, self.index_type)
        write_faiss(index, self.store / SHARD_FILE.format(self.count))
        self.count += 1


def write_index_by_layer(store: Path, directions: pa.Table, index_type: str) -> None:
    """The index of a whole ``directions`` table (ids, layer, vector), as ingest writes it."""
    layers = directions["layer"].to_numpy()
    ids = directions["direction_id"].to_numpy().astype(np.int64)
    vectors = vector_matrix(directions["vector"])
    shards = IndexShards(store, index_type)
    for layer in np.unique(layers):
        rows = np.flatnonzero(layers == layer)
        rows = rows[np.argsort(ids[rows], kind="stable")]
        shards.add_layer(vectors[rows], ids[rows])
    shards.flush()


def write_index_from_database(database: Path, dest: Path) -> None:
    """Write the index shards of the store whose DuckDB file is ``database`` into ``dest``,
    layer by layer as ingest does (one shard's vectors in memory at a time), exact or
    approximate as ``models.index_type`` says. A model without vectors (loaded from a
    ``--vectors none`` bundle) gets no index."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {sql_string(str(database))} AS m (READ_ONLY)")
        index_type = con.sql("SELECT index_type FROM m.models").fetchall()[0][0]
        (n_null,) = con.sql("SELECT count(*) FROM m.directions WHERE vector IS NULL").fetchall()[0]
        layers = [] if n_null else [r[0] for r in con.sql(
            "SELECT DISTINCT layer FROM m.directions ORDER BY layer").fetchall()]  # fmt: skip
        shards = IndexShards(dest, index_type)
        for layer in layers:
            rows = con.sql(
                "SELECT direction_id, vector FROM m.directions WHERE layer = ? "
                "ORDER BY direction_id",
                params=[layer],
            ).to_arrow_table()
            ids = rows["direction_id"].to_numpy().astype(np.int64)
            shards.add_layer(vector_matrix(rows["vector"]), ids)
        shards.flush()
    finally:
        con.close()


def write_unembedding(store: Path, W_U_centered: np.ndarray) -> None:
    """Keep the centered unembedding (one row per token) so text queries need no model."""
    np.save(store / UNEMBED, np.ascontiguousarray(W_U_centered.T, dtype=np.float16))


def write_manifest(store: Path, record: dict[str, Any]) -> None:
    """Checksums of every file in the store, so that copies and bundles can be verified, the
    row count of each table (read from the store itself), the atlas format version it was
    written in, and ``record`` (``publish.store_record``: the model id, spec and ids)."""
    con = duckdb.connect(str(store / MODEL_DB), read_only=True)
    try:
        counts = {t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in COUNTED}
    finally:
        con.close()
    members = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(store.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest = {**record, "format_version": FORMAT_VERSION, "counts": counts, "members": members}
    (store / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def with_members(manifest: dict[str, Any], store: Path, names: Callable[[str], bool]) -> None:
    """Compute ``manifest``'s entries for the files of ``store`` whose ``names(name)`` holds
    again, in place (a repair's rebuilt file); the other entries stay as they were."""
    members = {name: m for name, m in manifest["members"].items() if not names(name)}
    for path in store.iterdir():
        if path.is_file() and names(path.name):
            members[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest["members"] = dict(sorted(members.items()))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
