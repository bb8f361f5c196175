"""Running a researcher's SQL against an atlas: read-only for real, interruptible, time-limited.

Three layers, each enough on its own for what it guards:

1. **The engine.** The reader attaches every model store ``READ_ONLY`` and then locks the
   session with DuckDB's own settings (``lock_session``): no file system access, no extension
   installed or loaded, configuration locked. No statement, however it is spelled, reads or
   writes a file other than the stores already attached.
2. **The transaction.** A read-only statement runs inside a transaction that is always rolled
   back, so even a statement that changes the session's own catalog (``EXPLAIN ANALYZE`` runs its
   statement: ``EXPLAIN ANALYZE DROP VIEW directions``) leaves nothing behind.
3. **The statement type**, checked by DuckDB's parser, for a clear message: one statement, a
   query (``SELECT``, or ``EXPLAIN`` of one) unless writes were asked for.

A statement runs on the caller's thread inside ``atlas.core.cancel.running``: Ctrl-C, the
caller's deadline (``timeout``) and a stop from another thread interrupt it within
milliseconds, without a thread of its own. However DuckDB reports an interruption
(``InterruptException`` after ``interrupt()``, or the ``RuntimeError`` its client raises when
Ctrl-C reaches a statement running on the main thread), it is a ``KeyboardInterrupt`` to the
caller, unless the work was stopped by its deadline (:class:`QueryTimeout`); a statement past
the session's memory limit (``atlas.core.memlimit``) is one :class:`MemoryLimitExceeded` line.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from atlas.core.cancel import running
from atlas.core.errors import AtlasError, one_line
from atlas.core.memlimit import memory_limit_exceeded

_T = duckdb.StatementType
_R = TypeVar("_R")
READ_ONLY_TYPES = (_T.SELECT, _T.EXPLAIN)
# With writes allowed: changing tables of the researcher's own database, nothing about the
# session (ATTACH, DETACH, USE, SET, PRAGMA) and no files (COPY, EXPORT, LOAD).
WRITE_TYPES = (*READ_ONLY_TYPES, _T.CREATE, _T.INSERT, _T.UPDATE, _T.DELETE, _T.MERGE_INTO,
               _T.DROP, _T.ALTER)  # fmt: skip
_EXPLAIN_OPTIONS = ("ANALYZE", "ANALYSE")

LOCKDOWN = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET lock_configuration = true",
)

STREAM_BATCH_ROWS = 10_000
SIZED_BATCH_ROWS = 1_024  # with a byte limit: smaller batches, so the limit is kept closely


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` says a statement was interrupted (Ctrl-C, or another thread's
    ``interrupt()``); see the module notes. It needs no import of DuckDB: without DuckDB
    imported, no DuckDB error was raised."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    engine = sys.modules.get("duckdb")
    if engine is not None and isinstance(exc, engine.InterruptException):
        return True
    return type(exc) is RuntimeError and str(exc).strip().lower() == "query interrupted"


def raise_interrupt(exc: BaseException) -> None:
    """Raise ``KeyboardInterrupt`` if ``exc`` is an interruption: for a handler that turns
    DuckDB's errors into findings or refusals (a damaged store, say), which would otherwise
    turn Ctrl-C or SIGTERM into one and carry on."""
    if is_interrupt(exc):
        raise KeyboardInterrupt from None


def engine_error(exc: BaseException, memory_limit: int, prefix: str = "") -> BaseException:
    """What a DuckDB failure is to the caller: ``KeyboardInterrupt`` for an interruption,
    :class:`MemoryLimitExceeded` past the memory limit, else one :class:`AtlasError` line
    (after ``prefix``); anything else is returned as it is."""
    if is_interrupt(exc):
        return KeyboardInterrupt()
    if isinstance(exc, duckdb.OutOfMemoryException):
        return memory_limit_exceeded(memory_limit)
    if isinstance(exc, duckdb.Error):
        return AtlasError(f"{prefix}{engine_message(exc)}")
    return exc


# an exception's line in a quoted traceback: "module.Name: message", or a bare "Name"
_RAISED = re.compile(r"(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception))(?:: (.+))?")


def engine_message(exc: BaseException) -> str:
    """DuckDB's error in one line. A failure of the Python file system a Parquet tree is read
    through, which DuckDB quotes with its whole traceback, is its exception's own line (a
    refusal to read a file, its message alone)."""
    text = str(exc)
    if "Traceback (most recent call last)" not in text:
        return one_line(exc)
    raised = [m for line in text.splitlines() if (m := _RAISED.fullmatch(line.strip()))]
    if not raised:
        return one_line(exc)
    name, message = raised[-1].groups()
    if message is None:
        return name
    return one_line(message if name == "PermissionError" else f"{name}: {message}")


def lock_session(con: duckdb.DuckDBPyConnection) -> None:
    """After this, the session can read only what is already attached (see the module notes)."""
    for statement in LOCKDOWN:
        con.execute(statement)


def check_statement(query: str, write: bool = False) -> duckdb.StatementType:
    """The type of ``query`` if it may run: exactly one statement, and a query unless ``write``."""
    if not isinstance(query, str):
        raise AtlasError(f"SQL must be a string, not {type(query).__name__}")
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise AtlasError(one_line(exc)) from None
    if len(statements) != 1:
        raise AtlasError(f"give exactly one SQL statement (got {len(statements)})")
    kind = statements[0].type
    allowed = WRITE_TYPES if write else READ_ONLY_TYPES
    inner = _explained_type(query) if kind == _T.EXPLAIN else kind
    if kind in allowed and inner in allowed:
        return kind
    if _T.MULTI in (kind, inner):
        # DuckDB runs a PIVOT without its values as two statements (one finds the values)
        raise AtlasError(
            "this statement runs as several (a PIVOT without its values does), and sql runs "
            "one: list the values, as in PIVOT t ON kind IN ('ov', 'mlp_in') USING count(*)"
        )
    name = str(inner or kind).rsplit(".", 1)[-1]
    name = "INSTALL or LOAD" if name == "LOAD" else name  # DuckDB types both as LOAD
    what = "EXPLAIN " if kind == _T.EXPLAIN and inner is not None else ""
    if (inner or kind) in _NAMED_BY_OTHERS:  # to DuckDB CHECKPOINT is a CALL, USE a SET, ...
        start = _explained_start(query) if what else 0
        name = (_leading_keywords(query[start:]) if start is not None else "") or name
    if write:
        raise AtlasError(
            f"{what}{name} is not allowed: with `write`, statements may create and change "
            "tables of your own user.duckdb, and nothing else"
        )
    raise AtlasError(
        f"{what}{name} is not allowed: sql is read-only (SELECT, or EXPLAIN of one)",
        hint="to keep your own tables in the atlas's user.duckdb, open it with `write` "
        "(the server never writes); model data always stays read-only",
    )


_NAMED_BY_OTHERS = (_T.CALL, _T.SET, _T.VACUUM, _T.DROP)  # DEALLOCATE is a DROP too


def _tokens(query: str) -> list[tuple[int, Any]]:
    """DuckDB's tokens of ``query``, each with its position as an index into the string
    (DuckDB gives byte offsets into its UTF-8 text: a comment in another script moves them)."""
    data, at_byte, at_char, tokens = query.encode(), 0, 0, []
    for pos, kind in duckdb.tokenize(query):
        at_char += len(data[at_byte:pos].decode())
        at_byte = pos
        tokens.append((at_char, kind))
    return tokens


def _leading_keywords(query: str) -> str:
    """The statement's name as written (``CHECKPOINT``, ``FORCE CHECKPOINT``), upper-cased,
    comments skipped; "" if it starts with no keyword."""
    words: list[str] = []
    for start, kind in _tokens(query):
        if kind == duckdb.token_type.comment:
            continue
        word = re.match(r"[A-Za-z_]+", query[start:])
        if kind != duckdb.token_type.keyword or word is None or len(words) == 2:
            break
        words.append(word.group().upper())
        if words[0] != "FORCE":
            break
    return " ".join(words)


def _explained_start(query: str) -> int | None:
    """Where the statement an ``EXPLAIN [ANALYZE] [(options)]`` wraps starts in ``query``
    (DuckDB's tokenizer finds it, comments included), or None."""
    tokens = _tokens(query)
    words = [
        (pos, query[pos : tokens[i + 1][0] if i + 1 < len(tokens) else len(query)].strip())
        for i, (pos, kind) in enumerate(tokens)
        if kind != duckdb.token_type.comment
    ]
    i, depth = 1, 0
    while i < len(words):
        word = words[i][1].upper()
        if depth == 0 and word not in _EXPLAIN_OPTIONS and not word.startswith("("):
            break
        depth += word.count("(") - word.count(")")
        i += 1
    return words[i][0] if i < len(words) else None


def _explained_type(query: str) -> duckdb.StatementType | None:
    """The type of the statement an ``EXPLAIN`` wraps: ``EXPLAIN ANALYZE`` runs it."""
    start = _explained_start(query)
    if start is None:
        return None
    try:
        inner = duckdb.extract_statements(query[start:])
    except duckdb.Error:
        return None
    return inner[0].type if len(inner) == 1 else None


def run_statement(
    con: duckdb.DuckDBPyConnection,
    query: str,
    params: list[Any] | dict[str, Any] | None = None,
    write: bool = False,
    max_rows: int | None = None,
    max_bytes: int | None = None,
    *,
    memory_limit: int,
) -> pa.Table:
    """Run one checked statement on ``con`` (a session bounded by ``memory_limit`` bytes), in
    the caller's stoppable work if any (``atlas.core.cancel``); see the module notes.

    Returns the statement's rows: a query's result, DuckDB's ``Count`` of changed rows for an
    ``INSERT``/``UPDATE``/``DELETE``, and no rows for one that returns none (``CREATE``). With
    ``max_rows`` (and ``max_bytes``), rows are streamed and only the first ``max_rows`` (as
    many batches as fit in about ``max_bytes``) are ever materialized.
    """
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int)
                                 or max_rows < 0):  # fmt: skip
        raise AtlasError(f"max_rows must be an integer of at least 0, not {max_rows!r}")
    if max_bytes is not None and max_rows is None:
        raise AtlasError("max_bytes needs max_rows")

    def rows(relation: duckdb.DuckDBPyRelation | None) -> pa.Table:
        if relation is None:
            return pa.table({})
        if max_rows is None:
            return relation.to_arrow_table()
        return _first_rows(relation, max_rows, max_bytes)

    return consume_statement(con, query, params, write, rows, memory_limit=memory_limit)


def stream_statement(
    con: duckdb.DuckDBPyConnection,
    query: str,
    params: list[Any] | dict[str, Any] | None,
    write: bool,
    consume: Callable[[pa.RecordBatchReader], _R],
    *,
    memory_limit: int,
) -> _R:
    """:func:`run_statement`, its rows handed to ``consume`` as a reader of Arrow batches of
    ``STREAM_BATCH_ROWS``, read as ``consume`` asks for them: a result larger than memory
    can be written out, where a table of it would be held whole outside the session's
    memory limit."""

    def batches(relation: duckdb.DuckDBPyRelation | None) -> _R:
        if relation is None:
            return consume(pa.RecordBatchReader.from_batches(pa.schema([]), []))
        reader = relation.to_arrow_reader(STREAM_BATCH_ROWS)
        try:
            return consume(reader)
        finally:
            reader.close()

    return consume_statement(con, query, params, write, batches, memory_limit=memory_limit)


def consume_statement(
    con: duckdb.DuckDBPyConnection,
    query: str,
    params: list[Any] | dict[str, Any] | None,
    write: bool,
    consume: Callable[[duckdb.DuckDBPyRelation | None], _R],
    *,
    memory_limit: int,
) -> _R:
    """Check one statement, run it in a transaction (committed only if ``write``) and return
    what ``consume`` makes of its relation (None for a statement without rows), all within
    the caller's stoppable work."""
    check_statement(query, write)

    def work() -> _R:
        # a Ctrl-C can raise in Python after the statement before was interrupted and before its
        # ROLLBACK ran: that transaction is aborted, and would refuse every later statement
        _roll_back(con)
        con.execute("BEGIN TRANSACTION")
        result = consume(con.sql(query, params=params))
        macros = _own_functions(con) if write else []
        if macros:
            raise AtlasError(
                "CREATE MACRO and CREATE FUNCTION are not allowed: your database is on every "
                "session's search path, where a function would change what the atlas's views "
                f"compute; keep tables and views (the session has {', '.join(macros)}: DROP "
                "MACRO removes one an earlier version let you make)"
            )
        con.execute("COMMIT" if write else "ROLLBACK")
        return result

    try:
        with running(con):
            return work()
    except BaseException as exc:
        # rolled back once the statement is out of the watcher's reach: a stopped statement is
        # interrupted again until it ends, and an interrupted ROLLBACK would leave the session's
        # transaction aborted
        _roll_back(con)
        if isinstance(exc, duckdb.Error | RuntimeError):
            raise engine_error(exc, memory_limit) from None
        raise


def _roll_back(con: duckdb.DuckDBPyConnection) -> None:
    """End the session's transaction, if it has one (the statement's own error is the news)."""
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def _own_functions(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The session's own macros and functions (judged by effect, however the statement was
    spelled): the researcher's database is on every session's search path, where a macro named
    like a built-in (``abs``) would change what the atlas's views compute."""
    rows = con.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE NOT internal ORDER BY 1"
    ).fetchall()
    return [name for (name,) in rows]


def _first_rows(relation: duckdb.DuckDBPyRelation, n: int, max_bytes: int | None) -> pa.Table:
    """The first ``n`` rows of ``relation``, reading no further than the batch holding them
    (or the batch past ``max_bytes``)."""
    batch = STREAM_BATCH_ROWS if max_bytes is None else SIZED_BATCH_ROWS
    reader = relation.to_arrow_reader(max(1, min(n, batch)))
    batches, rows, size = [], 0, 0
    try:
        for batch in reader if n else ():
            batches.append(batch)
            rows += batch.num_rows
            size += batch.nbytes
            if rows >= n or (max_bytes is not None and size >= max_bytes):
                break
    finally:
        reader.close()
    table = pa.Table.from_batches(batches, schema=reader.schema)
    return table.slice(0, min(n, table.num_rows))


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
