"""Progress on stderr, as tqdm bars, only on a terminal: piped output stays clean.

:class:`Bars` draws what the library tells a ``progress`` callback (``atlas.core.progress``:
an ingest's blocks, a bundle's models): one bar per kind of unit, with what is done, what is
left and the time remaining. :class:`HopProgress` draws a trace's hops: a trace with a low
``--min-cos`` and several hops can expand thousands of directions, each a search of every
model, and without a sign of life it looks hung; its bar appears only once a hop has run for
``DELAY`` seconds, so quick traces stay clean.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

DELAY = 1.0  # seconds a hop runs before its bar is shown


def on_terminal(file: IO[str] | None = None) -> bool:
    """Whether ``file`` (stderr) is a terminal: where progress is shown."""
    stream = file if file is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Bars:
    """A progress callback ``(what, done, total)`` that draws a tqdm bar per ``what`` on
    ``file`` (stderr); a bar stays, complete, once its work is done. Nothing is drawn where
    ``file`` is not a terminal (tqdm's ``disable=None``)."""

    def __init__(self, file: IO[str] | None = None):
        self.file = file if file is not None else sys.stderr
        self.bars: dict[str, Any] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        bar = self.bars.get(what)
        if bar is None:
            bar = self.bars[what] = tqdm(
                total=total,
                desc=f"{'':>15} {what}",
                unit=what.rstrip("s"),
                file=self.file,
                disable=None,
                mininterval=0,  # units are seconds apart: draw each one as it is done
                miniters=1,
            )
        bar.update(done - bar.n)
        if done >= total:
            self.bars.pop(what).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class HopProgress:
    """A :data:`query.trace.TraceProgress` that draws a tqdm bar per hop on ``file``."""

    def __init__(self, file: IO[str] | None = None):
        self.file = file if file is not None else sys.stderr
        self.hop = 0
        self.bar: Any = None

    def __call__(self, hop: int, done: int, total: int) -> None:
        if hop != self.hop:
            self.close()
            self.hop = hop
            self.bar = tqdm(
                total=total,
                desc=f"trace hop {hop}",
                unit="direction",
                file=self.file,
                disable=None,
                leave=False,
                delay=DELAY,
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> HopProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
