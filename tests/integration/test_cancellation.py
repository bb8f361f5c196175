"""One cancellation path (``atlas.core.cancel``): deadlines, stops from another thread,
Ctrl-C on the main thread and the server's request limit all end a running DuckDB statement
within a bound, and a statement without a time limit starts no thread."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import atlas
from atlas.errors import AtlasError, QueryTimeout
from atlas.interface import Deadline, stoppable
from atlas.server.app import create_app

# Runs for hours in constant memory (a cross join counted without materializing it).
RUNAWAY = "SELECT count(*) FROM range(1000000000000) a, range(1000000) b WHERE a.range < 0"
BOUND = 3.0  # seconds: how soon a stopped statement must have ended (it takes ms)


@pytest.fixture(scope="module")
def handle(small_atlas: Path) -> Iterator[atlas.Atlas]:
    with atlas.open(small_atlas) as a:
        yield a


def test_a_statement_without_a_time_limit_starts_no_thread(
    handle: atlas.Atlas, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle.sql("SELECT 1")  # the process's one watcher may start here (the main thread's Ctrl-C)
    started: list[Any] = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    before = threading.active_count()
    for _ in range(3):
        assert handle.sql("SELECT 42 AS x")["x"].to_pylist() == [42]
        assert handle.reader.sql("SELECT count(*) AS n FROM directions")["n"][0].as_py() > 0
        assert handle.search("fire", k=1)
        assert handle.sql("SELECT 7 AS x", timeout=30)["x"].to_pylist() == [7]
    assert started == [] and threading.active_count() == before


def test_a_deadline_stops_a_long_statement_and_the_handle_serves_on(handle: atlas.Atlas) -> None:
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="time limit of 0.3 s"):
        handle.sql(RUNAWAY, timeout=0.3)
    assert time.monotonic() - started < 0.3 + BOUND
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="time limit of 0.2 s"), stoppable(Deadline.after(0.2)):
        handle.reader.sql(RUNAWAY)  # a library query, inside the caller's own unit of work
    assert time.monotonic() - started < 0.2 + BOUND
    assert handle.sql("SELECT 1 AS x")["x"].to_pylist() == [1]


def test_a_shorter_deadline_set_later_still_stops_in_time(handle: atlas.Atlas) -> None:
    """The watcher sleeps until the earliest deadline it knows of (one that another unit set
    first, here 20 s away): a shorter one set after it must wake it."""
    with stoppable(Deadline.after(20)):
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match="time limit of 0.3 s"):
            handle.sql(RUNAWAY, timeout=0.3)
        assert time.monotonic() - started < 0.3 + BOUND
    for _ in range(50):  # units that end at once leave nothing running behind them
        assert handle.sql("SELECT 1 AS x", timeout=30)["x"].to_pylist() == [1]
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="time limit of 0.2 s"):
        handle.sql(RUNAWAY, timeout=0.2)
    assert time.monotonic() - started < 0.2 + BOUND


def test_a_stop_from_another_thread_ends_that_work_and_only_that(handle: atlas.Atlas) -> None:
    """Its running statement is interrupted, its next one refused, and the thread serves on
    once the unit has ended; other threads' work is not touched."""
    reader = handle.reader
    running, outcome = threading.Event(), {}

    def work() -> None:
        with stoppable() as unit:
            outcome["unit"] = unit
            running.set()
            for step in ("runaway", "next"):
                try:
                    reader.sql(RUNAWAY)
                except AtlasError as exc:
                    outcome[step] = exc
        outcome["after"] = reader.sql("SELECT 1 AS x")["x"].to_pylist()

    thread = threading.Thread(target=work)
    thread.start()
    assert running.wait(10)
    time.sleep(0.3)  # the statement is running
    sent = time.monotonic()
    outcome["unit"].stop(QueryTimeout("stopped by the test"))
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - sent < BOUND
    assert str(outcome["runaway"]) == str(outcome["next"]) == "stopped by the test"
    assert outcome["after"] == [1]
    assert handle.sql("SELECT 2 AS x")["x"].to_pylist() == [2]  # this thread never stopped


def test_nested_work_stops_with_its_outer_deadline(handle: atlas.Atlas) -> None:
    started = time.monotonic()
    outer = Deadline.after(0.3, "the outer limit")
    with pytest.raises(QueryTimeout, match="outer limit of 0.3 s"), stoppable(outer):
        handle.sql(RUNAWAY, timeout=60)  # its own limit is later
    assert time.monotonic() - started < 0.3 + BOUND


def test_ctrl_c_stops_a_statement_on_the_main_thread_at_once(handle: atlas.Atlas) -> None:
    """DuckDB alone notices Ctrl-C on the main thread only now and then (seconds to minutes
    late, measured); through the watcher it is milliseconds, at any moment. The time limit
    is a backstop: a Ctrl-C that is missed fails the test in a minute instead of hanging it."""
    for delay in (0.05, 0.2, 0.4):
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        started = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                timer.start()
                handle.sql(RUNAWAY, timeout=60)
        finally:
            timer.cancel()
        assert time.monotonic() - started < delay + BOUND
    assert handle.sql("SELECT 1 AS x")["x"].to_pylist() == [1]


def test_the_servers_limit_answers_504_in_time_and_serves_on(small_atlas: Path) -> None:
    with TestClient(create_app(str(small_atlas), timeout=0.5)) as client:
        for _ in range(2):
            started = time.monotonic()
            response = client.get("/api/sql", params={"query": RUNAWAY})
            assert time.monotonic() - started < 0.5 + BOUND
            assert response.status_code == 504
            assert "server's time limit of 0.5 s" in response.json()["error"]
        # the stopped work freed its thread: the next requests are served at once
        for _ in range(3):
            got = client.get("/api/sql", params={"query": "SELECT 42 AS x"})
            assert got.status_code == 200 and got.json()["rows"] == [{"x": 42}]


def test_an_interrupt_while_a_store_is_attached_is_not_taken_for_damage(
    small_atlas: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening an atlas turns a store DuckDB cannot read into a model left out as damaged; an
    interrupted read (Ctrl-C, SIGTERM) stays an interruption, not a damaged model."""
    import duckdb

    import atlas.core.reader

    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise duckdb.InterruptException("INTERRUPT Error: Interrupted!")

    monkeypatch.setattr(atlas.core.reader, "store_problem", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atlas.open(small_atlas)
