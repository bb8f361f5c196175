"""SIGTERM (what `kill`, a batch scheduler or a container's stop sends) stops a command as
Ctrl-C does: it cleans up what it made, says so in one line, and exits 143 (128 + SIGTERM)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.helpers import run_cli, start_cli
from tests.support.processes import finish, running

RUNAWAY = "SELECT count(*) FROM range(1000000000000) a, range(1000000) b WHERE a.range < 0"


def _terminated(ended_stderr: str) -> bool:
    return ended_stderr.strip().splitlines() == ["terminated: the atlas is unchanged"]


@pytest.mark.slow  # an export and a bundle's open in a process: about 7 s
def test_a_bundle_opened_by_a_terminated_command_leaves_no_private_copy(
    small_atlas: Path, tmp_path: Path
) -> None:
    """Opening a bundle unpacks it into a private folder, removed when the command ends; a
    SIGTERM while it is there removes it too (it stayed behind, a bundle's size each time)."""
    bundle = tmp_path / "small.bundle"
    exported = run_cli("--atlas", small_atlas, "export", "-o", bundle)
    assert exported.returncode == 0, exported.stderr
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = start_cli("--atlas", bundle, "search", "fire", env={"TMPDIR": str(scratch)})
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("svd-atlas-open-") for p in scratch.iterdir()):
        assert running(process) and time.monotonic() < deadline, "the bundle was not unpacked"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    ended = finish(process, timeout=30)
    assert ended.returncode == 128 + signal.SIGTERM, ended.stderr
    assert _terminated(ended.stderr), ended.stderr
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
def test_sigterm_stops_a_runaway_statement_at_once(small_atlas: Path) -> None:
    """A DuckDB statement notices signals late on its own (seconds to minutes): SIGTERM is
    routed to the watcher that interrupts it, as Ctrl-C is."""
    process = start_cli("--atlas", small_atlas, "sql", RUNAWAY)
    time.sleep(3)  # past start-up: the statement is running
    assert running(process)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    ended = finish(process, timeout=30)
    assert time.monotonic() - sent < 1.0
    assert ended.returncode == 128 + signal.SIGTERM and _terminated(ended.stderr), ended.stderr
