"""Every reading session is bounded in memory and has no temp space; Ctrl-C is one line.

A query that needs more than the session's limit is refused with one line, in the CLI, in
Python and in the server (HTTP 507, the server answering on), and the process's own peak
memory, read from the kernel, stays near the limit. DuckDB's interrupt errors are Ctrl-C:
exit 130 and one line, however the interrupt reaches the query and at whatever moment.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient

import atlas
from atlas.core.errors import AtlasError
from atlas.core.memlimit import MemoryLimitExceeded
from atlas.server.app import create_app
from tests.support.helpers import assert_one_error_line, run_cli, start_cli
from tests.support.processes import Ended, finish, interrupt

# slow: queries sized to reach the memory limit
pytestmark = pytest.mark.slow

# The example: 400 million rows sorted (it used to reach 13 GB).
SORT = "SELECT count(*) FROM (SELECT range, random() r FROM range(400000000) ORDER BY r)"
# Grows without end (a cross product materializes one side).
HUNGRY = "SELECT count(*) FROM range(1000000000000) a, range(1000000000000) b"
# Runs for hours in constant memory.
RUNAWAY = "SELECT count(*) FROM range(1000000000000) WHERE random() < 0"
SMALL = "256MB"
SMALL_BYTES = 256_000_000
INTERPRETER = 1_200_000_000  # bytes a CLI process may take besides DuckDB's bounded memory


@pytest.fixture(scope="module")
def handle(minilm_atlas: Path) -> Iterator[atlas.Atlas]:
    with atlas.open(minilm_atlas, memory_limit=SMALL) as a:
        yield a


def _is_one_line(ended: Ended) -> bool:
    return "Traceback" not in ended.stderr and len(ended.stderr.strip().splitlines()) == 1


def test_a_query_past_the_limit_is_one_line_and_the_process_stays_near_it(
    minilm_atlas: Path,
) -> None:
    process = start_cli("--atlas", minilm_atlas, "sql", SORT, "--memory-limit", SMALL)
    ended = finish(process, timeout=120)
    assert ended.returncode == 1 and _is_one_line(ended), ended.stderr
    assert "needed more than 256 MB of memory" in ended.stderr
    assert "--memory-limit" in ended.stderr
    assert ended.peak_rss < SMALL_BYTES + INTERPRETER


def test_the_environment_sets_the_limit_and_bad_limits_are_one_line(minilm_atlas: Path) -> None:
    result = run_cli("--atlas", minilm_atlas, "sql", HUNGRY, env={"SVD_ATLAS_MEMORY_LIMIT": SMALL})
    assert "needed more than 256 MB" in assert_one_error_line(result)
    for bad, why in (("10MB", "too small"), ("lots", "a size such as"), ("2XB", "a size such as"),
                     ("99999999TB", "more than DuckDB takes")):  # fmt: skip
        for command in ("sql", "serve"):
            args = [command, "SELECT 1"] if command == "sql" else [command, "--port", "1"]
            result = run_cli("--atlas", minilm_atlas, *args, "--memory-limit", bad)
            assert why in assert_one_error_line(result) and result.returncode == 2, (command, bad)
        with pytest.raises(AtlasError, match=why):
            atlas.open(minilm_atlas, memory_limit=bad)
    for bad in ("nan", "inf", "0", "-1", "1e300"):  # a bad time limit is a bad value: exit 2
        result = run_cli("--atlas", minilm_atlas, "sql", "SELECT 1", "--timeout", bad)
        line = assert_one_error_line(result)
        assert result.returncode == 2 and "--timeout: must be a positive, finite number" in line
    ok = run_cli("--atlas", minilm_atlas, "sql", "SELECT 42 AS x", "--memory-limit", "1.5GB")
    assert ok.returncode == 0 and ok.stdout.split() == ["x", "42"]


def test_python_refuses_past_the_limit_and_the_handle_serves_on(handle: atlas.Atlas) -> None:
    for query in (HUNGRY, SORT):
        with pytest.raises(MemoryLimitExceeded, match="needed more than 256 MB of memory"):
            handle.sql(query)
    # the library's own queries share the bound: one past it is the same line
    with pytest.raises(MemoryLimitExceeded):
        handle.reader.sql(HUNGRY)
    assert handle.sql("SELECT count(*) AS n FROM directions")["n"].to_pylist() == [13824]
    assert [h.direction_id for h in handle.search("fire", k=1)] == [432]
    # nothing can be spilled: the session has no temp space at all
    settings = handle.sql(
        "SELECT name, value FROM duckdb_settings() "
        "WHERE name IN ('temp_directory', 'max_temp_directory_size')"
    ).to_pylist()
    assert {r["name"]: r["value"] for r in settings} == {
        "temp_directory": "",
        "max_temp_directory_size": "0 bytes",
    }


def test_the_server_refuses_with_507_and_answers_on(minilm_atlas: Path) -> None:
    with TestClient(create_app(str(minilm_atlas), memory_limit=SMALL)) as client:
        refused = client.get("/api/sql", params={"query": HUNGRY})
        assert refused.status_code == 507
        body = refused.json()
        assert body["status"] == 507 and "needed more than 256 MB" in body["error"]
        page = client.get("/sql", params={"query": SORT})
        assert page.status_code == 507 and "needed more than 256 MB" in page.text
        assert client.get("/api/health").status_code == 200
        again = client.get("/api/sql", params={"query": "SELECT 42 AS x"})
        assert again.status_code == 200 and again.json()["rows"] == [{"x": 42}]


def test_ctrl_c_stops_a_library_query_on_the_main_thread_at_once(handle: atlas.Atlas) -> None:
    """A library query (what search and trace run) on the main thread stops at Ctrl-C within
    moments, at any moment (DuckDB alone noticed it only now and then), and the handle works
    on. The query would end by itself after some seconds, so a missed Ctrl-C fails, not hangs."""
    finite = "SELECT count(*) FROM range(4000000000) WHERE random() < 0"
    for delay in (0.0, 0.05, 0.2, 0.4):
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        started = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                timer.start()
                handle.reader.sql(finite)
                time.sleep(1)  # a Ctrl-C the query missed arrives here
        finally:
            timer.cancel()
        assert time.monotonic() - started < delay + 2
    assert handle.sql("SELECT 1 AS x")["x"].to_pylist() == [1]


@pytest.mark.parametrize(
    "error", [RuntimeError("Query interrupted"), duckdb.InterruptException("INTERRUPT Error")]
)
def test_every_command_maps_duckdb_interrupts_to_one_line_and_130(
    minilm_atlas: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    import atlas.api

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr(atlas.api.Atlas, "trace", interrupted)
    result = run_cli("--atlas", minilm_atlas, "trace", "432")
    assert result.returncode == 130 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["interrupted: the atlas is unchanged"]


def test_ctrl_c_while_the_process_winds_up_leaves_the_commands_outcome(
    minilm_atlas: Path,
) -> None:
    """A Ctrl-C after the command has ended (its output written, click closing its context)
    has nothing left to stop: the command's own outcome stands, not click's "Aborted!" and
    exit 1. A real process, as the moment is after everything ``CliRunner`` sees; the
    context's closing is slowed to make the moment wide enough to hit."""
    code = (
        "import sys, time, click\n"
        "from atlas.cli import main\n"
        "close = click.Context.close\n"
        "def slowly(self):\n"
        "    if self.parent is None:\n"
        "        print('closing', file=sys.stderr, flush=True)\n"
        "        time.sleep(2)\n"
        "    close(self)\n"
        "click.Context.close = slowly\n"
        "main()\n"
    )
    process = start_cli("--atlas", minilm_atlas, "models", prefix=[sys.executable, "-c", code])
    assert process.stderr is not None and process.stderr.readline() == "closing\n"
    interrupt(process)
    ended = finish(process, timeout=30)
    assert ended.returncode == 0 and "Aborted" not in ended.stderr, ended.stderr
    assert ended.stdout.splitlines()[1].startswith("minilm ")


def test_ctrl_c_while_a_failure_is_put_into_words_is_a_ctrl_c(minilm_atlas: Path) -> None:
    """The command failed and its message is being written when Ctrl-C comes: exit 130 and
    the one interrupted line, not click's "Aborted!". Slowed as above, in a real process."""
    code = (
        "import importlib, sys, time\n"
        "cli_main = importlib.import_module('atlas.cli.main')  # the package names main() so\n"
        "words = cli_main.cli_message\n"
        "def slowly(*args, **kwargs):\n"
        "    print('wording', file=sys.stderr, flush=True)\n"
        "    time.sleep(2)\n"
        "    return words(*args, **kwargs)\n"
        "cli_main.cli_message = slowly\n"
        "cli_main.main()\n"
    )
    args = ("--atlas", minilm_atlas, "show", "99999999")  # no such direction
    process = start_cli(*args, prefix=[sys.executable, "-c", code])
    assert process.stderr is not None and process.stderr.readline() == "wording\n"
    interrupt(process)
    ended = finish(process, timeout=30)
    assert ended.returncode == 130, ended.stderr
    assert ended.stderr.strip().splitlines() == ["interrupted: the atlas is unchanged"]


def _sigint_sweep(args: list[str | Path], fractions: list[float]) -> list[Ended]:
    """The command run to its end, then again with a SIGINT at each fraction of that run's
    length. The measured run is the second: the first pays for a cold page cache, and fractions
    of it would all land after a warm run had finished."""
    finish(start_cli(*args), timeout=120)
    started = time.monotonic()
    whole = finish(start_cli(*args), timeout=120)
    length = time.monotonic() - started
    outcomes = [whole]
    for fraction in fractions:
        process = start_cli(*args)
        time.sleep(fraction * length)
        sent = time.monotonic()
        interrupt(process)
        ended = finish(process, timeout=30)
        assert time.monotonic() - sent < 3, (fraction, ended.stderr)
        outcomes.append(ended)
    return outcomes


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_a_query_that_reaches_its_limit(minilm_atlas: Path) -> None:
    """Before the query starts, while it grows, and while it is being refused at the limit."""
    args: list[str | Path] = ["--atlas", minilm_atlas, "sql", HUNGRY, "--memory-limit", SMALL]
    whole, *interrupted = _sigint_sweep(args, [0.5, 0.7, 0.85, 0.92, 0.97, 0.99])
    assert whole.returncode == 1 and "needed more than 256 MB" in whole.stderr
    for ended in [whole, *interrupted]:
        assert _is_one_line(ended), ended.stderr
        assert ended.peak_rss < SMALL_BYTES + INTERPRETER
        if ended.returncode == 1:
            assert "needed more than 256 MB" in ended.stderr
        else:
            assert ended.returncode == 130 and "interrupted" in ended.stderr
    assert any(e.returncode == 130 for e in interrupted)


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_a_trace(minilm_atlas: Path) -> None:
    """Every moment gives the whole answer or one interrupted line. A machine that speeds up
    after the measured run (another test's load ending) can let every SIGINT land after the
    end: the sweep is then run again, earlier."""
    args: list[str | Path] = ["--atlas", minilm_atlas, "trace", "432"]
    for earlier in (1.0, 0.6, 0.36):
        fractions = [f * earlier for f in (0.3, 0.5, 0.65, 0.8, 0.9, 0.97)]
        whole, *interrupted = _sigint_sweep(args, fractions)
        assert whole.returncode == 0 and "432" in whole.stdout
        for ended in interrupted:
            if ended.returncode == 0:  # it had finished
                assert ended.stdout == whole.stdout
            else:
                # the notes the whole run prints may come first (a Ctrl-C after the walk ended)
                lines = ended.stderr.strip().splitlines()
                notes = [line for line in lines if line.startswith("note:")]
                assert set(notes) <= set(whole.stderr.splitlines()), ended.stderr
                errors = [line for line in lines if line not in notes]
                assert ended.returncode == 130 and "Traceback" not in ended.stderr, ended.stderr
                assert len(errors) == 1 and "interrupted" in errors[0], ended.stderr
        if any(e.returncode == 130 for e in interrupted):
            return
    pytest.fail("no SIGINT of three sweeps landed before the trace ended")


@pytest.mark.slow
def test_a_result_larger_than_the_limit_is_written_out_within_it(
    minilm_atlas: Path, tmp_path: Path
) -> None:
    """``--out`` writes the rows as they come: 40 M rows (640 MB as Arrow) under a 256 MB
    limit leave the process within the limit of a process that answers one row, where holding
    the result would not."""
    import pyarrow.parquet as pq

    baseline = finish(start_cli("--atlas", minilm_atlas, "sql", "SELECT 1 AS x"), timeout=120)
    out = tmp_path / "rows.parquet"
    query = "SELECT range AS a, range * 2 AS b FROM range(40000000)"
    ended = finish(
        start_cli("--atlas", minilm_atlas, "sql", query, "--memory-limit", SMALL, "--out", out),
        timeout=300,
    )
    assert ended.returncode == 0, ended.stderr
    assert "wrote 40000000 rows" in ended.stderr
    assert pq.ParquetFile(out).metadata.num_rows == 40_000_000
    assert ended.peak_rss < baseline.peak_rss + SMALL_BYTES + 150_000_000, ended.peak_rss


def test_a_table_reads_only_the_rows_it_shows(minilm_atlas: Path) -> None:
    """The table format shows the first 500 rows and says there are more, without computing
    them (ten billion here); csv and json give every row asked for, as the rows come."""
    shown = run_cli("--atlas", minilm_atlas, "sql", "SELECT range FROM range(10000000000)")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "range" and lines[1:501] == [str(i) for i in range(500)]
    assert lines[501:] == [
        "... more rows: the table shows the first 500 (--format csv or json, or --out FILE, "
        "for all of them)"
    ]
    rows = run_cli("--atlas", minilm_atlas, "sql", "SELECT range FROM range(25000)", "--format",
                   "csv").stdout.splitlines()  # fmt: skip
    assert rows == ["range", *map(str, range(25000))]  # three batches of rows, in order
    capped = run_cli("--atlas", minilm_atlas, "sql", "SELECT range FROM range(10000000000)",
                     "--format", "json", "--max-rows", "3").stdout  # fmt: skip
    assert capped == '[\n {\n  "range": 0\n },\n {\n  "range": 1\n },\n {\n  "range": 2\n }\n]\n'


# (format, rows, --max-rows): at a batch's edge (2,048 rows), well inside one, and a result of
# exactly the cap, which has no note
MAX_ROWS_CASES = [("csv", 5000, 2048), ("csv", 3, 3), ("table", 5000, 3), ("json", 2048, 2048),
                  ("file", 5000, 3)]  # fmt: skip


def test_max_rows_says_when_it_left_rows_out(minilm_atlas: Path, tmp_path: Path) -> None:
    for fmt, n, cap in MAX_ROWS_CASES:
        query = f"SELECT range FROM range({n})"
        out = ["--out", tmp_path / "rows.csv"] if fmt == "file" else ["--format", fmt]
        result = run_cli("--atlas", minilm_atlas, "sql", query, "--max-rows", cap, *out)
        assert result.returncode == 0, result.stderr
        noted = f"note: the first {cap} rows (--max-rows); more rows match" in result.stderr
        assert noted == (n > cap), (fmt, n, cap, result.stderr)
        if fmt == "csv":
            assert result.stdout.splitlines() == ["range", *map(str, range(min(n, cap)))]


def test_a_row_too_large_for_text_is_one_line_before_it_takes_memory(minilm_atlas: Path) -> None:
    """One cell of 90 MB (a list over a cross join) would be about a gigabyte of Python
    values in a table, JSON or CSV: refused in one line; Parquet takes it as it is."""
    huge = "SELECT list(repeat('x', 3000)) AS s FROM range(30000)"
    for fmt in ("table", "json", "csv"):
        line = assert_one_error_line(run_cli("--atlas", minilm_atlas, "sql", huge, "--format", fmt))
        assert "row 1 of the result holds 86 MB, more than a table, JSON or CSV row" in line
