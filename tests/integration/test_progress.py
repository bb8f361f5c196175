"""Progress is tqdm bars on stderr, on a terminal only: an ingest on a pty shows its stages
and a bar of blocks done out of the total, with the time left; export and load a bar of
models; piped, stderr stays empty."""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pytest

import atlas
from tests.support.helpers import run_cli, start_warm_cli

INGEST = ["ingest", "random:llama-tiny", "--max-rank", "2"]  # 4 blocks


def _on_a_pty(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run the CLI, forked warm, with stderr on a pseudo-terminal (stdout piped); its exit and
    stderr."""
    process = start_warm_cli(*args, terminal=True)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(process.stderr.fileno(), 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return process.wait(timeout=30), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow  # an ingest in a real process on a pty
def test_ingest_on_a_terminal_shows_a_bar_of_blocks_done_left_and_time(tmp_path: Path) -> None:
    code, stderr = _on_a_pty(["--atlas", str(tmp_path / "a"), *INGEST])
    assert code == 0, stderr
    assert "[1/3] boot" in stderr and "[3/3] finish" in stderr
    frames = re.split(r"[\r\n]", stderr)
    bars = [f for f in frames if "blocks:" in f and "|" in f]
    counts = [m.group(1) for f in bars if (m := re.search(r"(\d+)/4 \[", f))]
    assert counts[-1] == "4" and set(counts) <= {"0", "1", "2", "3", "4"}
    # done/total, then elapsed<remaining (tqdm's own format)
    assert re.search(r"\b4/4 \[\d\d:\d\d<\d\d:\d\d", stderr), bars[-1]


@pytest.mark.slow  # progress display, not results: seconds of ingest and export
def test_ingest_piped_prints_nothing_on_stderr(tmp_path: Path) -> None:
    result = run_cli("--atlas", tmp_path / "a", *INGEST)
    assert result.returncode == 0 and result.stderr == ""
    assert "ingested 'random:llama-tiny'" in result.stdout


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (what tqdm looks at to draw)."""

    def isatty(self) -> bool:
        return True


@pytest.mark.slow  # progress display, not results: seconds of ingest and export
def test_export_and_load_draw_a_bar_of_models_on_a_terminal(
    small_atlas: Path, tmp_path: Path
) -> None:
    from atlas.cli.progress import Bars

    terminal, told = _Terminal(), []
    with atlas.open(small_atlas) as a, Bars(file=terminal) as bars:
        a.export(tmp_path / "b.svdatlas", progress=lambda *t: (told.append(t), bars(*t)))
    assert told == [("models", 1, 3), ("models", 2, 3), ("models", 3, 3)]
    assert re.search(r"models: 100%\|.*\| 3/3 \[", terminal.getvalue())
    terminal = _Terminal()
    with Bars(file=terminal) as bars:
        atlas.load(tmp_path / "loaded", tmp_path / "b.svdatlas", progress=bars)
    assert re.search(r"models: 100%\|.*\| 3/3 \[", terminal.getvalue())
    piped = io.StringIO()  # not a terminal: nothing drawn
    with atlas.open(small_atlas) as a, Bars(file=piped) as bars:
        a.export_parquet(tmp_path / "tree", progress=bars)
    assert piped.getvalue() == ""


@pytest.mark.slow  # progress display, not results: seconds of ingest and export
def test_export_and_load_piped_print_nothing_on_stderr(small_atlas: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.svdatlas"
    exported = run_cli("--atlas", small_atlas, "export", "-o", bundle)
    assert exported.returncode == 0 and exported.stderr == ""
    loaded = run_cli("--atlas", tmp_path / "loaded", "load", bundle)
    assert loaded.returncode == 0 and loaded.stderr == "" and "loaded" in loaded.stdout
