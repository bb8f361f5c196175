"""The one way work on an atlas is stopped: Ctrl-C, a caller's ``timeout``, a server's limit.

Work runs in a :func:`stoppable` block, which may carry a :class:`Deadline`. Each DuckDB
statement in it runs inside :func:`running` on its cursor, on the caller's own thread: no
statement starts a thread. One watcher thread serves the whole process (started the first time
it is needed). It interrupts (``cursor.interrupt()``) the running statements of work

- whose deadline has passed (it sleeps until the earliest one),
- that another thread stopped (:meth:`Work.stop`, e.g. a request whose client gave up), or
- on the main thread, when Ctrl-C arrives (or SIGTERM, which the command line takes as Ctrl-C).

Ctrl-C needs the watcher because DuckDB's Python client notices SIGINT in a statement on the
main thread only when its own check comes round (``PyErr_CheckSignals`` between tasks):
measured on DuckDB 2.0, a count over 4e9 rows stopped within 30 ms most times and after 35 to
98 s the others. While a statement runs on the main thread, Python's signal handler is told
to write the signal's number to the watcher's pipe (``signal.set_wakeup_fd``, restored after
the statement); the watcher reads it and interrupts that statement at once, and Python raises
``KeyboardInterrupt`` as usual.

An interrupt that reaches the engine before a statement starts (or between two) is lost, so
the watcher interrupts stopped work again every :data:`STOP_INTERVAL` until its statements
have ended, and a stopped unit's next statement does not start (:func:`running` checks).
Work between statements (a FAISS search) calls :func:`check` where it can stop.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from atlas.core.errors import BadParameter, QueryTimeout

STOP_INTERVAL = 0.05  # seconds between interrupts of stopped work that has not ended yet


class Interruptible(Protocol):
    """What the watcher stops: a DuckDB cursor."""

    def interrupt(self) -> None: ...


def check_timeout(timeout: Any) -> None:
    """A time limit is a positive, finite number of seconds (or None: no limit)."""
    if timeout is None:
        return
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= threading.TIMEOUT_MAX
    ):
        raise BadParameter(
            f"must be a positive, finite number of seconds, not {timeout!r}",
            param="timeout",
        )


@dataclass(frozen=True)
class Deadline:
    """A time limit on a unit of work (``seconds`` from when it was made, on the monotonic
    clock), or none; ``what`` opens the line a stopped unit raises."""

    seconds: float | None = None
    at: float | None = None
    what: str = "the query was stopped after the time limit"

    @classmethod
    def after(cls, seconds: float | None, what: str | None = None) -> Deadline:
        """A deadline ``seconds`` from now (None: none); ``seconds`` is checked."""
        check_timeout(seconds)
        at = None if seconds is None else time.monotonic() + seconds
        return cls(seconds, at) if what is None else cls(seconds, at, what)

    def remaining(self) -> float | None:
        """Seconds left (0 once passed), or None without a limit."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def error(self) -> QueryTimeout:
        return QueryTimeout(f"{self.what} of {self.seconds:g} s")


@dataclass(eq=False)
class Work:
    """One unit of stoppable work (see :func:`stoppable`), nested in ``parent`` if any."""

    deadline: Deadline
    parent: Work | None = None
    _why: BaseException | None = None
    _statements: list[Interruptible] = field(default_factory=list)
    _ended: bool = False  # its block has exited (its deadline no longer matters)

    def stop(self, why: BaseException | None = None) -> None:
        """Stop this work from any thread: its running statements are interrupted, its next
        one is refused with ``why`` (by default, a :class:`QueryTimeout` saying it was
        cancelled). A unit that has ended is not affected."""
        with _watcher.lock:
            if self._why is None:
                self._why = why or QueryTimeout("the work was cancelled")
        _watcher.stopping(self)

    def stopped(self) -> BaseException | None:
        """Why this work (or work it is part of) was stopped, or None."""
        work: Work | None = self
        while work is not None:
            if work._why is None and work.deadline.passed():
                work._why = work.deadline.error()
            if work._why is not None:
                return work._why
            work = work.parent
        return None

    def check(self) -> None:
        """Raise why the work was stopped, if it was."""
        why = self.stopped()
        if why is not None:
            raise why


_current: contextvars.ContextVar[Work | None] = contextvars.ContextVar("atlas_work", default=None)


def current() -> Work | None:
    """The work the calling thread (or task) is doing, if any."""
    return _current.get()


def check() -> None:
    """Stop here if the current work was stopped: for work between statements."""
    work = _current.get()
    if work is not None:
        work.check()


@contextlib.contextmanager
def stoppable(deadline: Deadline | None = None) -> Iterator[Work]:
    """Run the block as one unit of work, stopped once ``deadline`` passes or when
    :meth:`Work.stop` is called; inside other work, it stops with that work too."""
    work = Work(deadline or Deadline(), _current.get())
    token = _current.set(work)
    if work.deadline.at is not None:
        _watcher.watch(work)
    try:
        yield work
    finally:
        _current.reset(token)
        _watcher.forget(work)


@contextlib.contextmanager
def running(cursor: Interruptible) -> Iterator[None]:
    """Run the block (one statement, or one step of one, on ``cursor``) so that it can be
    stopped: by the current work's deadline or :meth:`Work.stop`, or by Ctrl-C on the main
    thread. Its interruption is raised as why the work was stopped (a :class:`QueryTimeout`),
    or else as the engine reported it (``sqlguard.engine_error`` makes it Ctrl-C). Off the
    main thread and outside any work, the block just runs."""
    work = _current.get()
    main = threading.current_thread() is threading.main_thread()
    if work is None and not main:
        yield
        return
    chain = _chain(work)
    wakeup = _watcher.begin(cursor, chain, main)
    try:
        if work is not None:  # after registering: a stop from now on interrupts it
            work.check()
        yield
    except BaseException:
        why = work.stopped() if work is not None else None
        if why is not None:
            raise why from None
        raise
    finally:
        _watcher.end(cursor, chain, main, wakeup)


def _chain(work: Work | None) -> list[Work]:
    units = []
    while work is not None:
        units.append(work)
        work = work.parent
    return units


class _Watcher:
    """The process's one watcher thread and what it watches (see the module notes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._deadlines: list[tuple[float, int, Work]] = []  # a heap, by time
        self._stopping: set[Work] = set()
        self._main: list[Interruptible] = []  # statements running on the main thread
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._read = self._write = -1

    def _ensure(self) -> None:
        """Start the thread (again in a forked child, where it does not exist); with the lock."""
        if self._thread is not None and self._pid == os.getpid():
            return
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="svd-atlas-watcher", daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, b"\0")

    def watch(self, work: Work) -> None:
        assert work.deadline.at is not None
        with self.lock:
            self._ensure()
            heapq.heappush(self._deadlines, (work.deadline.at, id(work), work))
            # the thread sleeps until the earliest deadline it knew of: only an earlier one
            # needs it awake now (a server's equal time limits never do: no thread switch per
            # request)
            if self._deadlines[0][2] is work:
                self._wake()

    def forget(self, work: Work) -> None:
        with self.lock:
            work._ended = True  # its deadline leaves the heap once it is the earliest
            self._stopping.discard(work)

    def stopping(self, work: Work) -> None:
        with self.lock:
            self._ensure()
            self._stopping.add(work)
            statements = list(work._statements)
            self._wake()
        for statement in statements:
            statement.interrupt()

    def begin(self, cursor: Interruptible, chain: list[Work], main: bool) -> int | None:
        """Register a statement; on the main thread, route Ctrl-C to the watcher and return
        the wakeup fd to restore."""
        with self.lock:
            for work in chain:
                work._statements.append(cursor)
            if not main:
                return None
            self._ensure()
            self._main.append(cursor)
        try:
            return signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter's main thread after all
            return None

    def end(self, cursor: Interruptible, chain: list[Work], main: bool, wakeup: int | None) -> None:
        if wakeup is not None:
            signal.set_wakeup_fd(wakeup)
        with self.lock:
            for work in chain:
                work._statements.remove(cursor)
            if main:
                self._main.remove(cursor)

    def _run(self) -> None:
        while True:
            wait = self._tick()
            ready, _, _ = select.select([self._read], [], [], wait)
            if ready:
                data = os.read(self._read, 512)
                if signal.SIGINT in data or signal.SIGTERM in data:
                    with self.lock:
                        statements = list(self._main)
                    for statement in statements:
                        statement.interrupt()

    def _tick(self) -> float | None:
        """Stop work whose deadline passed, interrupt stopped work again; the seconds until
        this is needed next (None: not until woken)."""
        now = time.monotonic()
        with self.lock:
            while self._deadlines and (
                self._deadlines[0][2]._ended or self._deadlines[0][0] <= now
            ):
                _, _, work = heapq.heappop(self._deadlines)
                if work._ended:
                    continue
                if work._why is None:
                    work._why = work.deadline.error()
                self._stopping.add(work)
            # stopped work with no statement running is let go: its next one is refused
            self._stopping = {w for w in self._stopping if w._statements}
            statements = [s for w in self._stopping for s in w._statements]
            later = self._deadlines[0][0] - now if self._deadlines else None
        for statement in statements:
            statement.interrupt()
        if self._stopping:
            return STOP_INTERVAL if later is None else min(later, STOP_INTERVAL)
        return later


_watcher = _Watcher()
