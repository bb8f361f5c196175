"""SQL over an atlas: one statement, read-only unless asked otherwise.

The model data is always read-only (each store is attached READ_ONLY). ``write=True`` attaches
the atlas's own scratch database (``user.duckdb``) read-write as the default schema, so a
researcher can keep derived tables (``CREATE TABLE my_heads AS SELECT ...``) next to the atlas.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from atlas.errors import AtlasError
from atlas.handle import Atlas

READ_ONLY_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def check_statement(query: str, write: bool) -> None:
    """Refuse anything but one statement, and anything but a query unless ``write``."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise AtlasError(one_line(exc)) from None
    if len(statements) != 1:
        raise AtlasError(f"give exactly one SQL statement (got {len(statements)})")
    kind = statements[0].type
    if not write and kind not in READ_ONLY_TYPES:
        name = str(kind).rsplit(".", 1)[-1]
        raise AtlasError(
            f"{name} is not allowed: sql is read-only (SELECT/EXPLAIN); pass --write to keep "
            "your own tables in the atlas's user.duckdb (model data always stays read-only)"
        )


def run_sql(a: Atlas, query: str, write: bool = False) -> pa.Table:
    check_statement(query, write)
    if write:
        a.enable_writes()
    try:
        return a.con.sql(query).to_arrow_table() if _returns_rows(query) else _run(a, query)
    except duckdb.Error as exc:
        raise AtlasError(one_line(exc)) from None


def _returns_rows(query: str) -> bool:
    return duckdb.extract_statements(query)[0].type in READ_ONLY_TYPES


def _run(a: Atlas, query: str) -> pa.Table:
    a.con.execute(query)
    return pa.table({"ok": [True]})


def one_line(exc: BaseException) -> str:
    """DuckDB's message on one line (its messages span several, with a caret diagram)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(line for line in lines if not set(line) <= {"^", " "})
    return text[:500]
