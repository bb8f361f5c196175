"""Opening an atlas for reading: one DuckDB session over every published model store.

Each model store is ATTACHed read-only, and the contract's tables are temporary views that
union them, so SQL sees one atlas. Many readers can do this at once, also while an ingest runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from atlas.errors import AtlasError
from atlas.layout import MODEL_DB, RESIDUAL_INDEX, AtlasDir, Catalog, dir_size
from atlas.schema import TABLES

# Read a catalog again if a store it names vanished meanwhile (a concurrent replace + sweep).
_OPEN_ATTEMPTS = 3


class Atlas:
    """A read-only view of an atlas directory. Use :func:`atlas.open`."""

    def __init__(self, root: str | os.PathLike[str]):
        self.dir = AtlasDir(root)
        if not self.dir.exists():
            raise AtlasError(
                f"no atlas at {self.dir.root} (create one with: svd-atlas ingest MODEL)"
            )
        for attempt in range(_OPEN_ATTEMPTS):
            self.catalog = self.dir.read_catalog()
            try:
                self.con = self._connect(self.catalog)
                break
            except duckdb.IOException:
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise

    @property
    def root(self) -> Path:
        return self.dir.root

    def _connect(self, catalog: Catalog) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        aliases = []
        for i, entry in enumerate(catalog.models.values()):
            path = self.dir.store_path(entry) / MODEL_DB
            con.execute(f"ATTACH '{_quote(path)}' AS m{i} (READ_ONLY)")
            aliases.append(f"m{i}")
        present = set(
            con.execute("SELECT database_name, table_name FROM duckdb_tables()").fetchall()
        )
        for table in TABLES:
            # a store written before a table was added to the contract simply lacks it
            having = [a for a in aliases if (a, table) in present]
            if having:
                select = "* REPLACE (vector::FLOAT[] AS vector)" if table == "directions" else "*"
                union = " UNION ALL BY NAME ".join(
                    f"SELECT {select} FROM {a}.{table}" for a in having
                )
                con.execute(f"CREATE TEMP VIEW {table} AS {union}")
            else:
                con.execute(_empty_table_ddl(table))
        return con

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run one query and return its result as an Arrow table (``.to_pandas()`` for pandas)."""
        return self.con.sql(query, params=params).to_arrow_table()

    def model_ids(self) -> list[str]:
        return list(self.catalog.models)

    def store_path(self, model_id: str) -> Path:
        try:
            return self.dir.store_path(self.catalog.models[model_id])
        except KeyError:
            raise AtlasError(
                f"no model {model_id!r} in {self.root}; it holds: "
                f"{', '.join(self.model_ids()) or 'nothing yet'}"
            ) from None

    def index_path(self, model_id: str) -> Path:
        return self.store_path(model_id) / RESIDUAL_INDEX

    def model_sizes(self) -> dict[str, int]:
        """Bytes on disk per model."""
        return {m: dir_size(self.store_path(m)) for m in self.model_ids()}

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _empty_table_ddl(table: str) -> str:
    from atlas.schema import create_statements

    ddl = next(s for s in create_statements(0) if s.strip().startswith(f"CREATE TABLE {table} "))
    return ddl.replace("CREATE TABLE", "CREATE TEMP TABLE", 1)
