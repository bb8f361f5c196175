"""A request's FAISS threads (``atlas.server.work``): every core for a request answered alone,
one each for requests answered side by side."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio.to_thread
import faiss

from atlas.server import work


class _Live:
    """The one thing ``run`` asks of a served atlas: a handle to lease."""

    @contextmanager
    def lease(self) -> Iterator[None]:
        yield None


def test_a_request_alone_uses_every_core_and_requests_side_by_side_one_each() -> None:
    seen: dict[str, int] = {}
    first_running, second_done = threading.Event(), threading.Event()

    def first(_: Any) -> None:
        seen["alone"] = faiss.omp_get_max_threads()  # OpenMP's setting of this worker thread
        first_running.set()
        assert second_done.wait(10)

    def second(_: Any) -> None:
        seen["beside"] = faiss.omp_get_max_threads()
        second_done.set()

    async def both() -> None:
        async def after_the_first_started() -> None:
            assert await anyio.to_thread.run_sync(first_running.wait, 10)
            await work.run(_Live(), second, 30)  # type: ignore[arg-type]

        await asyncio.gather(work.run(_Live(), first, 30), after_the_first_started())  # type: ignore[arg-type]

    asyncio.run(both())
    assert seen == {"alone": work.CORES, "beside": max(1, work.CORES // 2)}
    asyncio.run(work.run(_Live(), second, 30))  # type: ignore[arg-type]
    assert seen["beside"] == work.CORES  # the count went back down: alone again
