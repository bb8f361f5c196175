"""A trace's progress on stderr: one bar per hop, for traces long enough to need one.

A trace with a low ``--min-cos`` and several hops can expand thousands of directions, each a
search of every model; without a sign of life it looks hung. The bar appears only on a
terminal (tqdm's ``disable=None``), and only once a hop has run for ``DELAY`` seconds, so
piped output and quick traces stay clean.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

DELAY = 1.0  # seconds a hop runs before its bar is shown


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
