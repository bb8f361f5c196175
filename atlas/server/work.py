"""Running library calls for a request: in a worker thread, on a leased handle, in time.

Library calls block (DuckDB, FAISS), so they run in the server's thread pool, each as one
stoppable unit of work (``atlas.interface.stoppable``) with the request's :class:`Deadline`:
once it passes, the process's watcher interrupts the work's running statement and its next one
is refused, so that a runaway query does not keep a thread busy. The response does not wait
for work between statements (a FAISS search) to notice: it is the timeout at the deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from atlas.api import Atlas
from atlas.interface import Deadline, one_thread_per_search, stoppable
from atlas.server.live import LiveAtlas

T = TypeVar("T")


async def run(live: LiveAtlas, call: Callable[[Atlas], T], timeout: float) -> T:
    """``call(atlas)`` on the current handle, stopped after ``timeout`` seconds."""
    deadline = Deadline.after(timeout, "the request was stopped after the server's time limit")

    def work() -> T:
        one_thread_per_search()  # the server's parallelism is its concurrent requests
        with live.lease() as handle, stoppable(deadline):
            return call(handle)

    try:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except TimeoutError:
        raise deadline.error() from None
