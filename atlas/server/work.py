"""Running library calls for a request: in a worker thread, on a leased handle, in time.

Library calls block (DuckDB, FAISS), so they run in the server's thread pool. Each runs as one
cancellable unit of work on the handle it leased: when the request's time limit passes, the
response is a timeout at once, and the work is cancelled (its running statement interrupted,
its next one refused), so that a runaway query does not keep a thread busy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from atlas.api import Atlas
from atlas.errors import QueryTimeout
from atlas.interface import WorkUnit
from atlas.server.live import LiveAtlas

T = TypeVar("T")


async def run(live: LiveAtlas, call: Callable[[Atlas], T], timeout: float) -> T:
    """``call(atlas)`` on the current handle, stopped after ``timeout`` seconds."""
    started: list[tuple[Atlas, WorkUnit]] = []

    def work() -> T:
        with live.lease() as handle, handle.cancellable() as unit:
            started.append((handle, unit))
            return call(handle)

    try:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except TimeoutError:
        if started:
            handle, unit = started[0]
            handle.cancel(unit)
        raise QueryTimeout(
            f"the request was stopped after the server's time limit of {timeout:g} s"
        ) from None
