"""Progress of long work (an ingest's blocks, a bundle's tables), told to the caller.

The library prints nothing on its own: work that takes long takes a :data:`Progress` callback,
told ``(what, done, total)`` as it goes (``what`` names the units: ``"blocks"``), and the CLI
draws it as a tqdm bar on a terminal (``atlas.cli.progress``).
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def no_progress(_what: str, _done: int, _total: int) -> None:
    """Progress told to no one."""
