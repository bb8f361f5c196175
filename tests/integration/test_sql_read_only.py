"""SQL is read-only for real: judged by effect on the atlas's files, through the CLI and Python.

Whatever a statement is, the atlas's files are byte for byte what they were afterwards, no
file appears outside the atlas, the handle keeps working, and files outside the atlas cannot
be read. Runaway queries stop at Ctrl-C or at their time limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import atlas
from atlas.core.errors import AtlasError
from atlas.core.memlimit import DEFAULT_MEMORY_LIMIT
from tests.support.helpers import assert_one_error_line, run_cli, start_cli
from tests.support.processes import finish, interrupt, running

# Runs for hours in constant memory.
RUNAWAY = "SELECT count(*) FROM range(1000000000000) WHERE random() < 0"
# Grows without end: a cross product materializes one side (it took 18.8 GB of a 24 GB machine
# before the session had a memory limit).
HUNGRY = "SELECT count(*) FROM range(1000000000000) a, range(1000000000000) b"
PEAK_RSS_ALLOWED = DEFAULT_MEMORY_LIMIT + 1_500_000_000  # the limit plus the interpreter's own
# Statements that would write or read a file, or change the session, however spelled.
HOSTILE = [
    "COPY (SELECT 'x' AS x) TO '{target}' (FORMAT csv, HEADER false)",
    "EXPLAIN ANALYZE COPY (SELECT 'x' AS x) TO '{target}' (FORMAT csv, HEADER false)",
    "explain /* quiet */ analyse copy directions to '{target}'",
    "EXPLAIN (FORMAT json) ANALYZE COPY models TO '{target}'",
    "EXPORT DATABASE '{folder}'",
    "ATTACH '{target}' AS x",
    "SELECT * FROM read_text('{target}')",
    "SELECT * FROM read_blob('{target}')",
    "SELECT * FROM read_csv('{target}')",
    "SELECT count(*) FROM glob('{folder}/*')",
    "SELECT * FROM sniff_csv('{target}')",
    "EXPLAIN ANALYZE SELECT * FROM read_text('{target}')",
    "SELECT * FROM query('COPY models TO ''{target}''')",
    "LOAD '{target}'",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA enable_profiling = 'json'",
    "CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE CREATE TABLE memory.main.t AS SELECT 1",
    "DROP VIEW directions",
    "EXPLAIN ANALYZE DROP VIEW directions",
    "EXPLAIN ANALYZE CREATE OR REPLACE VIEW directions AS SELECT 1 AS x",
    "DETACH m0",
    "USE m0",
    "CHECKPOINT",
    "CALL pragma_version()",
    "SELECT 1; COPY models TO '{target}'",
]


def every_file(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Inode, size, modification time and (below 1 MB) sha256 of every file under ``root``,
    hidden ones included. A write moves the modification time, which SQL cannot set back;
    hashing the large files too, a few hundred times per test, would cost seconds."""
    return {
        str(p.relative_to(root)): (
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if info.st_size < 1 << 20 else "",
        )
        for p in sorted(root.rglob("*"))
        if p.is_file() and (info := p.stat())
    }


@pytest.fixture(scope="module")
def hostile_atlas(tmp_path_factory: pytest.TempPathFactory, small_atlas: Path) -> Path:
    import shutil

    root = tmp_path_factory.mktemp("hostile") / "atlas"
    shutil.copytree(small_atlas, root)
    # the researcher's own database exists too: it must not change either
    with atlas.open(root, write=True) as a:
        a.sql("CREATE TABLE mine AS SELECT 42 AS answer")
    return root


@pytest.fixture(scope="module")
def handle(hostile_atlas: Path) -> Iterator[atlas.Atlas]:
    with atlas.open(hostile_atlas) as a:
        yield a


def _targets(root: Path, canary: Path) -> list[tuple[str, str]]:
    store = next((root / "store").iterdir())
    return [
        (str(root / "catalog.json"), str(root)),
        (str(store / "model.duckdb"), str(store)),
        (str(store / "unembed.npy"), str(store)),
        (str(root / "user.duckdb"), str(root)),
        (str(canary / "new.csv"), str(canary)),
        ("/etc/passwd", "/root"),
    ]


@pytest.mark.slow
def test_hostile_statements_change_nothing_from_python(
    handle: atlas.Atlas, hostile_atlas: Path, tmp_path: Path
) -> None:
    before = every_file(hostile_atlas)
    directions = handle.sql("SELECT count(*) AS n FROM directions")["n"][0].as_py()
    for target, folder in _targets(hostile_atlas, tmp_path):
        outside = hostile_atlas not in Path(target).parents
        for template in HOSTILE:
            statement = template.format(target=target, folder=folder)
            try:
                handle.sql(statement)
            except AtlasError:
                pass
            else:  # only a read of the atlas's own attached files may succeed
                assert not outside and "read_" in statement, statement
            assert every_file(hostile_atlas) == before, statement
            assert list(tmp_path.iterdir()) == [], statement
    # the session is intact: the views, the model data and the researcher's table
    assert handle.sql("SELECT count(*) AS n FROM directions")["n"][0].as_py() == directions
    assert handle.sql("SELECT answer FROM mine")["answer"].to_pylist() == [42]


@pytest.mark.slow
def test_read_only_holds_with_write_enabled_outside_user_db(
    small_copy: Path, tmp_path: Path
) -> None:
    """--write lets statements change user.duckdb and nothing else."""
    canary = tmp_path / "canary"
    canary.mkdir()

    def others() -> dict[str, str]:
        return {k: v for k, v in every_file(small_copy).items() if "user.duckdb" not in k}

    with atlas.open(small_copy, write=True) as a:
        before = others()
        for target, folder in _targets(small_copy, canary):
            for template in HOSTILE:
                with contextlib.suppress(AtlasError):
                    a.sql(template.format(target=target, folder=folder))
                assert others() == before
                assert list(canary.iterdir()) == []
        # model data stays read-only even when writes are allowed
        with pytest.raises(AtlasError, match="read-only|read only|READ_ONLY"):
            a.sql("INSERT INTO m0.models SELECT * FROM m0.models")


SQL_WORDS = st.sampled_from(
    ["SELECT", "1", "*", "FROM", "directions", "models", ";", "DROP", "TABLE", "VIEW",
     "INSERT", "INTO", "CREATE", "COPY", "TO", "'{target}'", "ATTACH", "DETACH", "PRAGMA",
     "EXPLAIN", "ANALYZE", "WITH", "AS", "(", ")", "--", "/*", "*/", "read_text('{target}')",
     "glob('{folder}/*')", "EXPORT", "DATABASE", "SET", "USE", "m0", "CALL", "LOAD", "\n"]
)  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(SQL_WORDS, min_size=1, max_size=10).map(" ".join), st.sampled_from(range(6)))
@pytest.mark.slow
def test_any_statement_leaves_the_atlas_as_it_was(
    handle: atlas.Atlas, hostile_atlas: Path, tmp_path_factory: pytest.TempPathFactory,
    words: str, which: int,
) -> None:  # fmt: skip
    canary = tmp_path_factory.mktemp("canary")
    target, folder = _targets(hostile_atlas, canary)[which]
    statement = words.replace("{target}", target).replace("{folder}", folder)
    before = every_file(hostile_atlas)
    try:
        handle.sql(statement)
    except AtlasError as exc:
        assert "\n" not in str(exc)
    assert every_file(hostile_atlas) == before, statement
    assert list(canary.iterdir()) == [], statement
    assert handle.sql("SELECT count(*) AS n FROM models")["n"][0].as_py() == 3


@pytest.mark.parametrize(
    "statement",
    [
        "EXPLAIN ANALYZE COPY (SELECT 'x' AS x) TO '{root}/catalog.json' (FORMAT csv)",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM glob('/root/*')",
        "COPY models TO '{root}/models.csv'",
    ],
)
def test_hostile_statements_through_the_cli(hostile_atlas: Path, statement: str) -> None:
    before = every_file(hostile_atlas)
    result = run_cli("--atlas", hostile_atlas, "sql", statement.format(root=hostile_atlas))
    assert_one_error_line(result)
    assert every_file(hostile_atlas) == before


def test_out_refuses_any_path_inside_the_atlas(hostile_atlas: Path, tmp_path: Path) -> None:
    before = every_file(hostile_atlas)
    store = next((hostile_atlas / "store").iterdir())
    for inside in (hostile_atlas / "catalog.json", store / "x.parquet", hostile_atlas / "new.pq"):
        line = assert_one_error_line(
            run_cli("--atlas", hostile_atlas, "sql", "SELECT 1 AS x", "--out", inside)
        )
        assert "inside the atlas" in line
    # a symlink from outside into the atlas does not get around it
    link = tmp_path / "link"
    link.symlink_to(hostile_atlas, target_is_directory=True)
    line = assert_one_error_line(
        run_cli("--atlas", hostile_atlas, "sql", "SELECT 1 AS x", "--out", link / "catalog.json")
    )
    assert "inside the atlas" in line
    assert every_file(hostile_atlas) == before
    ok = run_cli("--atlas", hostile_atlas, "sql", "SELECT 1 AS x", "--out", tmp_path / "r.pq")
    assert ok.returncode == 0 and (tmp_path / "r.pq").is_file()
    # a hard link from outside to an atlas file is replaced, never written through
    hard = tmp_path / "hard.parquet"
    hard.hardlink_to(hostile_atlas / "catalog.json")
    ok = run_cli("--atlas", hostile_atlas, "sql", "SELECT 1 AS x", "--out", hard)
    assert ok.returncode == 0, ok.stderr
    assert every_file(hostile_atlas) == before
    assert hard.read_bytes()[:4] == b"PAR1"
    # a symbolic link is written through (the link stays); a pipe is refused, never replaced
    (tmp_path / "real.csv").write_text("old")
    (tmp_path / "named.csv").symlink_to(tmp_path / "real.csv")
    ok = run_cli("--atlas", hostile_atlas, "sql", "SELECT 1 AS x", "--out", tmp_path / "named.csv")
    assert ok.returncode == 0 and (tmp_path / "named.csv").is_symlink()
    assert (tmp_path / "real.csv").read_text() == "x\n1\n"
    os.mkfifo(tmp_path / "pipe.csv")
    line = assert_one_error_line(
        run_cli("--atlas", hostile_atlas, "sql", "SELECT 1 AS x", "--out", tmp_path / "pipe.csv")
    )
    assert "pipe.csv: it is not a regular file" in line and (tmp_path / "pipe.csv").is_fifo()


def test_macros_are_refused_even_with_write(small_copy: Path) -> None:
    """A macro in user.duckdb named like a built-in would change what the views compute for
    every later reader."""
    for statement in ("CREATE MACRO abs(x) AS 0", "CREATE FUNCTION twice(x) AS 2 * x"):
        line = assert_one_error_line(run_cli("--atlas", small_copy, "sql", "--write", statement))
        assert "not allowed" in line
    assert run_cli("--atlas", small_copy, "sql", "SELECT abs(-1) AS a").stdout.split() == ["a", "1"]


@pytest.mark.slow
def test_ctrl_c_stops_a_runaway_query(hostile_atlas: Path) -> None:
    """A query that runs for hours stops at Ctrl-C; so does one that grows without end, in
    the memory of the session's default limit: interrupted, or refused at the limit if it got
    there first (a machine fast enough fills 2 GB within the 3 s), never a hang. (Ctrl-C at
    every moment of a query is ``test_sql_memory_bound.py``'s.)"""
    for query in (RUNAWAY, HUNGRY):
        process = start_cli("--atlas", hostile_atlas, "sql", query)
        time.sleep(3)  # past start-up: the query is running
        assert query == HUNGRY or running(process)
        sent = time.monotonic()
        interrupt(process)
        ended = finish(process, timeout=30)
        assert time.monotonic() - sent < 1.0
        assert ended.peak_rss < PEAK_RSS_ALLOWED
        assert "Traceback" not in ended.stderr and len(ended.stderr.splitlines()) == 1
        if ended.returncode == 1:
            assert query == HUNGRY and "needed more than 2 GB of memory" in ended.stderr
        else:
            assert ended.returncode == 130 and "interrupted" in ended.stderr


def test_timeout_stops_a_runaway_query(hostile_atlas: Path, handle: atlas.Atlas) -> None:
    started = time.monotonic()
    line = assert_one_error_line(
        run_cli("--atlas", hostile_atlas, "sql", RUNAWAY, "--timeout", "0.5")
    )
    assert "time limit of 0.5 s" in line and time.monotonic() - started < 30
    started = time.monotonic()
    with pytest.raises(AtlasError, match="time limit"):
        handle.sql(RUNAWAY, timeout=0.3)
    assert time.monotonic() - started < 5
    assert handle.sql("SELECT 1 AS x")["x"].to_pylist() == [1]  # the handle still works
    for bad in (0, -1, float("inf"), float("nan"), 1e300, "1", True):
        with pytest.raises(AtlasError, match="positive, finite number of seconds"):
            handle.sql("SELECT 1", timeout=bad)
        with pytest.raises(AtlasError, match="positive, finite number of seconds"):
            handle.search("fire", timeout=bad)
    assert handle.sql("SELECT 1 AS x")["x"].to_pylist() == [1]  # and still works
    assert handle.sql("SELECT 1 AS x", max_rows=10**30)["x"].to_pylist() == [1]
    line = assert_one_error_line(
        run_cli("--atlas", hostile_atlas, "sql", "SELECT 1", "--timeout", "inf")
    )
    assert "positive, finite number of seconds" in line


def test_sql_help_names_every_table_and_view() -> None:
    from atlas.core.contract import TABLES
    from atlas.core.views import VIEWS

    text = " ".join(run_cli("sql", "--help").stdout.split())
    for name in (*TABLES, *VIEWS):
        assert name in text, name


def test_python_reads_need_write_to_be_asked_for(small_copy: Path) -> None:
    with atlas.open(small_copy) as a, pytest.raises(AtlasError, match="open it with `write`"):
        a.sql("CREATE TABLE mine2 AS SELECT 1")
    with atlas.open(small_copy, write=True) as a:
        a.sql("CREATE TABLE mine2 AS SELECT 7 AS seven")
    with atlas.open(small_copy) as a:
        assert a.sql("SELECT seven FROM mine2")["seven"].to_pylist() == [7]
    with atlas.open(small_copy, write=True) as a:
        a.sql("DROP TABLE mine2")
    assert json.loads((small_copy / "catalog.json").read_text())["models"]


@pytest.mark.parametrize(
    ("statement", "named"),
    [("CHECKPOINT", "CHECKPOINT"), ("FORCE CHECKPOINT", "FORCE CHECKPOINT"), ("USE m0", "USE"),
     ("RESET threads", "RESET"), ("ANALYZE", "ANALYZE"), ("CALL pragma_version()", "CALL"),
     ("SET threads = 1", "SET"), ("/* why */ checkpoint", "CHECKPOINT"), ("VACUUM", "VACUUM"),
     ("CHECKPOINT;", "CHECKPOINT"), ("RESET/**/threads", "RESET"),
     ("EXPLAIN CHECKPOINT", "EXPLAIN CHECKPOINT"),
     ("EXPLAIN ANALYZE CHECKPOINT", "EXPLAIN CHECKPOINT"), ("DEALLOCATE p", "DEALLOCATE"),
     ("DROP VIEW directions", "DROP")],
)  # fmt: skip
def test_a_refusal_names_the_statement_as_written(
    handle: atlas.Atlas, statement: str, named: str
) -> None:
    """DuckDB types CHECKPOINT as a CALL, USE and RESET as a SET, ANALYZE as a VACUUM."""
    with pytest.raises(AtlasError, match=f"^{named} is not allowed: sql is read-only"):
        handle.sql(statement)


def test_text_in_another_script_moves_nothing_the_guard_reads(handle: atlas.Atlas) -> None:
    """DuckDB's tokenizer gives byte offsets: read as string indexes, a comment of accented
    letters before an EXPLAINed statement shifted where the guard looked for it, so that a
    write could be read as the SELECT inside it, and a valid EXPLAIN was refused."""
    shift = "é" * len("CREATE TABLE t AS ")  # lands a byte-offset reading on "SELECT 1"
    with pytest.raises(AtlasError, match="^EXPLAIN CREATE is not allowed"):
        handle.sql(f"EXPLAIN ANALYZE /* {shift} */ CREATE TABLE t AS SELECT 1")
    for query in ("EXPLAIN /* 日本語 */ SELECT 1", "-- ü\nEXPLAIN ANALYZE SELECT 1",
                  "EXPLAIN (FORMAT json) /* 日本語日本語 */ SELECT 1"):  # fmt: skip
        assert handle.sql(query).num_rows >= 1, query
    with pytest.raises(AtlasError, match="^FORCE CHECKPOINT is not allowed"):
        handle.sql("/* café */ FORCE CHECKPOINT")
    with pytest.raises(AtlasError, match="^EXPLAIN CHECKPOINT is not allowed"):
        handle.sql("EXPLAIN (FORMAT json) CHECKPOINT")
