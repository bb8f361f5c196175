"""Running the real CLI in a subprocess, and fingerprinting an atlas on disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.zygote import WarmProcess

CLI = [sys.executable, "-c", "from atlas.cli import main; main()"]


def quiet(_message: str) -> None:
    """Stage log sink for in-process ingests."""


# One BLAS/OpenMP thread: an ingest next to other processes on few cores is several times
# faster without thread oversubscription (decompose: 1.2 s instead of 12 s on 2 busy cores).
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


PROCESS_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **PROCESS_ENV, **(extra or {})}


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in this process, through click's ``CliRunner``: what a user would see, without
    paying for a new interpreter (and torch's import) per call.

    An exception the CLI failed to turn into one line shows up as a traceback on stderr, as it
    would in a terminal, so ``"Traceback" not in result.stderr`` still means something. Use
    :func:`run_cli_process` where process behaviour (signals, exit codes of a dying process,
    pipes, resource limits) is what the test is about.
    """
    import threading
    import traceback

    from click.testing import CliRunner

    from atlas.cli.main import cli

    # CliRunner swaps the process's sys.stdout and sys.stderr: one call at a time
    assert threading.current_thread() is threading.main_thread(), "threads: run_cli_process"
    runner = CliRunner(env={**PROCESS_ENV, **(env or {})})
    result = runner.invoke(cli, [str(a) for a in args], input=input, prog_name="svd-atlas")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(
        ["svd-atlas", *map(str, args)], result.exit_code, result.stdout, stderr
    )


def run_cli_process(
    *args: str | Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter, for tests of process behaviour."""
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=cli_env(env)
    )


def start_cli(
    *args: str | Path, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.Popen[str]:
    """The CLI in a subprocess; ``prefix`` replaces the interpreter command (e.g. a wrapper)."""
    return subprocess.Popen(
        [*(prefix or CLI), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
    )


def start_warm_cli(
    *args: str | Path,
    env: dict[str, str] | None = None,
    file_size_limit: int | None = None,
    kill_at: str | None = None,
    terminal: bool = False,
) -> WarmProcess:
    """The CLI in a real process forked from a warm parent that has imported the model stack
    (``support.zygote``): for tests that kill, limit or race ingests, seconds faster than
    :func:`start_cli`. ``file_size_limit`` is ``ulimit -f`` in bytes; ``kill_at`` plants a
    SIGKILL at a moment of publishing (``support.kill_at``); ``terminal`` puts its stderr on a
    pseudo-terminal (where the CLI shows progress), read from ``stderr.fileno()`` until
    ``OSError`` once the child is gone."""
    from tests.support.zygote import Zygote

    return Zygote.get().start(
        [str(a) for a in args],
        cli_env(env),
        file_size_limit=file_size_limit,
        kill_at=kill_at,
        terminal=terminal,
    )


def fingerprint(root: Path) -> dict[str, str]:
    """sha256 of the catalog and of every file of every store the catalog names."""
    import json

    catalog_path = root / "catalog.json"
    if not catalog_path.exists():
        return {}
    out = {"catalog.json": hashlib.sha256(catalog_path.read_bytes()).hexdigest()}
    for entry in json.loads(catalog_path.read_text())["models"].values():
        for f in sorted((root / entry["store"]).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]
