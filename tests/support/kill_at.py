"""Run the CLI with a SIGKILL planted at one exact moment of publishing (crash tests only).

``python -m tests.support.kill_at POINT CLI-ARGS...``; the process kills itself with SIGKILL, as
``kill -9`` would, at POINT:

- ``before-move``: the store is complete and synced under ``.staging``, not yet moved;
- ``after-move``: the store is under ``store/`` but no catalog names it yet;
- ``before-catalog``: the new catalog is written and synced to its temporary file, not renamed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

POINTS = ("before-move", "after-move", "before-catalog")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plant(point: str) -> None:
    if point not in POINTS:
        raise SystemExit(f"unknown kill point {point!r}; choose from {', '.join(POINTS)}")
    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        moving_store = Path(dst).parent.name == "store"
        if (point == "before-move" and moving_store) or (
            point == "before-catalog" and Path(dst).name == "catalog.json"
        ):
            _die()
        real_replace(src, dst, *args, **kwargs)
        if point == "after-move" and moving_store:
            _die()

    os.replace = replace  # type: ignore[assignment]


if __name__ == "__main__":
    plant(sys.argv[1])
    from atlas.cli.main import cli

    cli(args=sys.argv[2:], prog_name="svd-atlas")
