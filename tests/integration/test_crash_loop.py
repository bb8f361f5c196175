"""kill -9 of a real ``svd-atlas ingest`` at several points: the atlas never changes or breaks.

Kill points (with the two of test_ingest_cli.py, while computing and while writing DuckDB):
during boot; once the first and the last of the three blocks of ``random:gpt2-tiny`` is written
under ``.staging`` (as its progress bar on a terminal says); and three exact moments of
publishing planted by ``tests.support.kill_at`` (before the store moves, after it moved but
before the catalog names it, and with the new catalog synced but not yet renamed over the old
one). Each point is its own test, so that one failure does not hide the others. The ingests
are real processes, forked from a parent that has imported the model stack already
(``support.zygote``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import atlas
from atlas.core.check import check_atlas
from atlas.core.layout import AtlasDir
from ingest.job import IngestOptions, ingest
from tests.support.helpers import SINGLE_THREAD, fingerprint, quiet, run_cli, start_warm_cli

MODEL = "random:gpt2-tiny"  # 3 blocks of width 64: seconds to ingest, real GPT-2 layout
INGEST = ("ingest", MODEL, "--name", "second", "--max-rank", "4")
SECOND_DIRECTIONS = 3 * (4 * 4 * 2 + 4 + 4)  # per layer: 4 heads x 4 sv x 2 sides, 2 MLPs x 4


Moment = Callable[[str], bool]  # true, given the stderr so far, when to kill


@pytest.fixture(scope="module")
def first_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "atlas"
    ingest(root, IngestOptions(model=MODEL, model_id="first", device="cpu"), log=quiet,
          )  # fmt: skip
    return root


@pytest.fixture
def root(first_atlas: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "atlas"
    shutil.copytree(first_atlas, copy)
    return copy


def _after(seconds: float) -> Moment:
    start = time.monotonic()
    return lambda _err: time.monotonic() - start > seconds


def _block_written(block: int) -> Moment:
    """True once the progress bar counts block ``block`` (0-based) done: its rows and index
    vectors are written to the staging store."""
    return lambda err: re.search(rf"\b{block + 1}/3 \[", err) is not None


def _kill_when(root: Path, moment: Moment) -> None:
    """Kill the ingest at ``moment``, watching its stderr on a terminal (where the CLI shows
    its progress bar)."""
    proc = start_warm_cli("--atlas", root, *INGEST, env=SINGLE_THREAD, terminal=True)
    chunks: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO once the child is gone
            while chunk := os.read(proc.stderr.fileno(), 4096):
                chunks.append(chunk)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 240
    while not moment(b"".join(chunks).decode(errors="replace")) and proc.poll() is None \
            and time.monotonic() < deadline:  # fmt: skip
        time.sleep(0.001)
    assert proc.poll() is None, "ingest ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def _planted(root: Path, point: str) -> None:
    proc = start_warm_cli("--atlas", root, *INGEST, env=SINGLE_THREAD, kill_at=point)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, err


KILLS: dict[str, Callable[[Path], None]] = {
    "boot": lambda r: _kill_when(r, _after(0.05)),  # building the model
    "block 0": lambda r: _kill_when(r, _block_written(0)),
    "block 2": lambda r: _kill_when(r, _block_written(2)),
    **{p: lambda r, p=p: _planted(r, p) for p in ("before-move", "after-move", "before-catalog")},
}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILLS)
def test_kill_9_leaves_the_atlas_as_it_was_and_a_rerun_completes(root: Path, point: str) -> None:
    before = fingerprint(root)
    KILLS[point](root)
    assert fingerprint(root) == before
    report = check_atlas(root)
    assert report.ok, [f.line() for f in report.errors]
    with atlas.open(root) as a:
        assert a.model_ids() == ["first"]
    if point == "after-move":  # the moved store is unreferenced: reported, not an error
        assert any("unreferenced store" in f.message for f in report.findings)

    result = run_cli("--atlas", root, *INGEST)
    assert result.returncode == 0, result.stderr
    assert not any((root / ".staging").iterdir())
    checked = run_cli("--atlas", root, "check")
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.splitlines()[-1].endswith(": ok")
    with atlas.open(root) as a:
        assert a.model_ids() == ["first", "second"]
        n = a.sql("SELECT count(*) AS n FROM directions WHERE model_id = 'second'").to_pylist()
        assert n == [{"n": SECOND_DIRECTIONS}]


def test_a_published_store_was_flushed_to_disk_before_the_catalog_named_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 cannot see a missing fsync (the page cache survives a process): a power cut
    would. Every file of the staged store is fsynced before the store is moved into place."""
    synced: list[str] = []
    moved: list[tuple[str, str, int]] = []  # (from, to, how many fsyncs had happened)
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        moved.append((str(src), str(dst), len(synced)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "atlas"
    ingest(root, IngestOptions(model=MODEL, device="cpu", max_rank=2), log=quiet)
    store_moves = [m for m in moved if Path(m[1]).parent.name == "store"]
    assert len(store_moves) == 1
    staging, store, n_synced = store_moves[0]
    files = [p for p in Path(store).rglob("*") if p.is_file()]
    assert files
    synced_before_move = set(synced[:n_synced])
    for f in files:
        assert str(Path(staging) / f.relative_to(store)) in synced_before_move, f.name


def test_sweep_removes_every_leftover_kind(tmp_path: Path) -> None:
    """What killed writers leave: a staging folder, the write probe file (a writer killed inside
    ensure_writable), a catalog temporary file. One sweep removes them all, and check then
    reports nothing."""
    root = tmp_path / "atlas"
    atlas_dir = AtlasDir(root)
    atlas_dir.ensure_writable()
    (root / ".staging" / "0a1b").mkdir()
    (root / ".staging" / "0a1b" / "model.duckdb").write_bytes(b"half")
    (root / ".staging" / ".probe-0a1b").write_bytes(b"")
    (root / ".catalog.json.0a1b.tmp").write_text("{")
    assert len(check_atlas(root).findings) == 3
    with atlas_dir.writer_lock():
        atlas_dir.sweep(atlas_dir.read_catalog())
    assert not any((root / ".staging").iterdir())
    assert sorted(p.name for p in root.iterdir()) == [".lock", ".staging", "catalog.json", "store"]
    assert check_atlas(root).findings == []
