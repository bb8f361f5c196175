"""Timing a whole process: its stdout, wall seconds and peak RSS (GNU time's %M)."""

from __future__ import annotations

import subprocess
import tempfile
import time


def timed_process(
    command: list[str], env: dict[str, str], cwd: str | None = None
) -> tuple[str, float, float]:
    """Run ``command``; its stdout, wall seconds and peak RSS in MB (the same measurement for
    every process compared)."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as peak:
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", peak.name, *command],
            capture_output=True, text=True, env=env, cwd=cwd,
        )  # fmt: skip
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(f"{command} failed: {proc.stderr[-2000:]}")
        return proc.stdout, wall, int(peak.read().split()[-1]) / 1024
