"""kill -9 of a real ``svd-atlas ingest`` at several points: the atlas never changes or breaks.

Kill points (with the two of test_ingest_cli.py, while computing and while writing DuckDB):
during boot; once the first, the third and the last of the six blocks is written under
``.staging`` (as its progress line says); and three exact moments of publishing planted by
``tests.support.kill_at`` (before the store moves, after it moved but before the catalog names
it, and with the new catalog synced but not yet renamed over the old one).
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import atlas
from atlas.core.check import check_atlas
from atlas.core.layout import AtlasDir
from tests.support.helpers import SINGLE_THREAD, fingerprint, run_cli, start_cli

INGEST = ("ingest", "minilm", "--name", "second", "--max-rank", "4")
KILL_AT = [sys.executable, "-m", "tests.support.kill_at"]


Moment = Callable[[list[str]], bool]  # true, given the stderr lines so far, when to kill


def _after(seconds: float) -> Moment:
    start = time.monotonic()
    return lambda _lines: time.monotonic() - start > seconds


def _block_written(block: int) -> Moment:
    """True once the progress says block ``block`` (0-based) is done: its rows and index
    vectors are written to the staging store."""
    return lambda lines: any(f"block {block + 1}/6 done" in line for line in lines)


def _kill_when(root: Path, moment: Moment) -> None:
    proc = start_cli("--atlas", root, *INGEST, env=SINGLE_THREAD)
    lines: list[str] = []
    assert proc.stderr is not None
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    deadline = time.monotonic() + 240
    while not moment(lines) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None, "ingest ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def _planted(root: Path, point: str) -> None:
    proc = start_cli(point, "--atlas", root, *INGEST, env=SINGLE_THREAD, prefix=KILL_AT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, err


def test_kill_9_at_each_point_leaves_the_atlas_as_it_was(
    minilm_atlas: Path, tmp_path: Path
) -> None:
    root = tmp_path / "atlas"
    shutil.copytree(minilm_atlas, root)
    before = fingerprint(root)
    kills: list[tuple[str, Callable[[Path], None]]] = [
        ("boot", lambda r: _kill_when(r, _after(1.5))),
        *[(f"block {b}", lambda r, b=b: _kill_when(r, _block_written(b))) for b in (0, 2, 5)],
        *[
            (p, lambda r, p=p: _planted(r, p))
            for p in ("before-move", "after-move", "before-catalog")
        ],
    ]
    for name, kill in kills:
        kill(root)
        assert fingerprint(root) == before, name
        report = check_atlas(root)
        assert report.ok, (name, [f.line() for f in report.errors])
        with atlas.open(root) as a:
            assert a.model_ids() == ["minilm"], name
            assert a.sql("SELECT count(*) AS n FROM directions").to_pylist() == [{"n": 9216}]
        if name == "after-move":  # the moved store is unreferenced: reported, not an error
            assert any("unreferenced store" in f.message for f in report.findings)

    result = run_cli("--atlas", root, *INGEST, env=SINGLE_THREAD)
    assert result.returncode == 0, result.stderr
    assert not any((root / ".staging").iterdir())
    checked = run_cli("--atlas", root, "check")
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.splitlines()[-1].endswith(": ok")
    with atlas.open(root) as a:
        assert a.model_ids() == ["minilm", "second"]
        n = a.sql("SELECT count(*) AS n FROM directions WHERE model_id = 'second'").to_pylist()
        assert n == [{"n": 4 * (72 * 2 + 12)}]


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
