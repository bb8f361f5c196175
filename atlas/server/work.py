"""Running library calls for a request: in a worker thread, on a leased handle, in time.

Library calls block (DuckDB, FAISS), so they run in the server's thread pool, each as one
stoppable unit of work (``atlas.interface.stoppable``) with the request's :class:`Deadline`:
once it passes, the process's watcher interrupts the work's running statement and its next one
is refused, so that a runaway query does not keep a thread busy. The response does not wait
for work between statements (a FAISS search) to notice: it is the timeout at the deadline.

A request's FAISS searches use the cores it has to itself: every core when it is the only one
being answered (at 1e6 directions, quiet: 1.9 ms a search on two threads against 3.0 on one),
fewer as more are answered (those waiting for a thread included), down to one each, as
concurrent requests then use the cores between them. The count is this process's: worker
processes (``serve --workers``) do not see each other's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio
import anyio.to_thread

from atlas.api import Atlas
from atlas.interface import Deadline, search_threads, stoppable, usable_cores
from atlas.server.live import LiveAtlas

T = TypeVar("T")

CORES = usable_cores()


class _InFlight:
    """How many requests this process is answering now (waiting for a thread included).
    Counted on the event loop's thread alone; worker threads only read it."""

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def one(self) -> Iterator[None]:
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


_in_flight = _InFlight()


async def run(live: LiveAtlas, call: Callable[[Atlas], T], timeout: float) -> T:
    """``call(atlas)`` on the current handle, stopped after ``timeout`` seconds."""
    deadline = Deadline.after(timeout, "the request was stopped after the server's time limit")

    def work() -> T:
        search_threads(max(1, CORES // max(1, _in_flight.count)))
        with live.lease() as handle, stoppable(deadline):
            return call(handle)

    try:
        with _in_flight.one(), anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except TimeoutError:
        raise deadline.error() from None
