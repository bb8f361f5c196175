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
from atlas.views import create_views

USER_DB = "user.duckdb"
# Read a catalog again if a store it names vanished meanwhile (a concurrent replace + sweep).
_OPEN_ATTEMPTS = 3


class Atlas:
    """A read-only view of an atlas directory. Use :func:`atlas.open`."""

    def __init__(self, root: str | os.PathLike[str]):
        self.dir = AtlasDir(root)
        self._indexes: dict[str, Any] = {}
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
                con.execute(empty_table_ddl(table))
        create_views(con)
        self._attach_user_db(con, write=False)
        return con

    def _attach_user_db(self, con: duckdb.DuckDBPyConnection, write: bool) -> None:
        """Make the researcher's own tables (``user.duckdb``, see ``query.sql``) visible.

        Read-only unless ``write``. A reader skips it while another process is writing it.
        """
        path = self.root / USER_DB
        if not write and not path.exists():
            return
        if "user_db" in {row[0] for row in con.execute("SHOW DATABASES").fetchall()}:
            con.execute("USE memory")
            con.execute("DETACH user_db")
        mode = "" if write else " (READ_ONLY)"
        try:
            con.execute(f"ATTACH '{_quote(path)}' AS user_db{mode}")
        except duckdb.IOException:
            if write:
                raise AtlasError(f"{path} is being written by another process") from None
            return
        con.execute(
            "SET search_path = 'user_db.main'"
            if write
            else "SET search_path = 'memory.main,user_db.main'"
        )
        if write:
            con.execute("USE user_db")

    def enable_writes(self) -> None:
        """Attach ``user.duckdb`` read-write as the default database for new tables."""
        self._attach_user_db(self.con, write=True)

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run one query and return its result as an Arrow table (``.to_pandas()`` for pandas)."""
        return self.con.sql(query, params=params).to_arrow_table()

    def alias(self, model_id: str) -> str:
        """The DuckDB database name of one model's store (``m0``, ``m1``, ...)."""
        self.store_path(model_id)  # raises for an unknown model
        return f"m{list(self.catalog.models).index(model_id)}"

    def model_of(self, direction_id: int) -> str:
        """The model a direction id belongs to (from the catalog's id ranges)."""
        for model_id, entry in self.catalog.models.items():
            if (
                entry.first_direction_id
                <= direction_id
                < entry.first_direction_id + entry.n_directions
            ):
                return model_id
        raise AtlasError(f"no direction {direction_id} in {self.root}")

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
        """The model's FAISS file; a model loaded from a bundle without vectors has none."""
        path = self.store_path(model_id) / RESIDUAL_INDEX
        if not path.is_file():
            raise no_vectors(model_id)
        return path

    def residual_index(self, model_id: str) -> Any:
        """One model's residual-space FAISS index (ids = direction_id), read once per handle."""
        if model_id not in self._indexes:
            from atlas.indexes import read_index

            self._indexes[model_id] = read_index(self.index_path(model_id))
        return self._indexes[model_id]

    def model_sizes(self) -> dict[str, int]:
        """Bytes on disk per model."""
        return {m: dir_size(self.store_path(m)) for m in self.model_ids()}

    def search(
        self,
        text: str | list[str] | None = None,
        *,
        direction: int | None = None,
        vector: str | Path | None = None,
        model: str | list[str] | None = None,
        space: str = "auto",
        k: int = 10,
        min_score: float = 0.0,
        **filters: Any,
    ) -> list[Any]:
        """Concept search (see ``query.search``); ``filters`` are ``query.filters.Filters``
        fields: kinds, layers, heads, side, max_sv_index, min_sigma."""
        from query.filters import Filters
        from query.search import resolve_query, search

        models = (model,) if isinstance(model, str) else tuple(model) if model else None
        query = resolve_query(self, text, direction, vector, models, space)
        return search(self, query, Filters(**filters), k=k, min_score=min_score)

    def trace(self, direction_id: int, min_cos: float = 0.3, hops: int = 1, **kw: Any) -> list[Any]:
        """Concept tracing from one direction (see ``query.trace``)."""
        from query.trace import trace

        return trace(self, direction_id, min_cos, hops, **kw)

    def card(self, *target: Any, top: int = 10) -> dict[str, Any]:
        """``card(direction_id)`` or ``card(model_id, layer, head_or_kind)``."""
        from query.cards import direction_card, matrix_card

        if len(target) == 1:
            return direction_card(self, int(target[0]))
        model_id, layer, head = target
        return matrix_card(self, model_id, int(layer), str(head), top)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def no_vectors(model_id: str) -> AtlasError:
    return AtlasError(
        f"model {model_id!r} has no vectors (it was loaded from a bundle exported with "
        "--vectors none), so it cannot be searched: load a bundle with vectors or ingest it again"
    )


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def empty_table_ddl(table: str) -> str:
    from atlas.schema import create_statements

    ddl = next(s for s in create_statements(0) if s.strip().startswith(f"CREATE TABLE {table} "))
    return ddl.replace("CREATE TABLE", "CREATE TEMP TABLE", 1)
