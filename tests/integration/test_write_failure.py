"""A write that fails halfway (full disk, file size limit): one clear error, the atlas intact."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import atlas
from atlas.cli.main import cli
from atlas.core.check import check_atlas
from tests.support.helpers import SINGLE_THREAD, assert_one_error_line, fingerprint, start_warm_cli

pytestmark = pytest.mark.slow  # real processes under resource limits


def _assert_intact(root: Path, before: dict[str, str]) -> None:
    assert fingerprint(root) == before
    assert not any((root / ".staging").iterdir())  # the failed writer removed its staging
    report = check_atlas(root)
    assert report.ok and not report.findings, [f.line() for f in report.findings]
    with atlas.open(root) as a:
        assert a.model_ids() == ["minilm"]


def test_file_size_limit_while_duckdb_writes(atlas_copy: Path) -> None:
    """A real ingest process whose files may not exceed 2 MiB: DuckDB's write fails."""
    before = fingerprint(atlas_copy)
    proc = start_warm_cli(
        "--atlas", atlas_copy, "ingest", "minilm", "--name", "x", "--max-rank", "4",
        env=SINGLE_THREAD, file_size_limit=2 * 1024 * 1024,
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    line = assert_one_error_line(_Completed(proc.returncode, out, err))
    assert "File too large" in line and "is the disk full? The atlas is unchanged" in line
    _assert_intact(atlas_copy, before)


class _Completed:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _no_space(path: Any, *_args: Any, **_kwargs: Any) -> None:
    """Write a truncated file, then fail the way a full disk does."""
    Path(str(path)).write_bytes(b"\x93NUMPY partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _faiss_fails(_index: Any, path: str) -> None:
    Path(path).write_bytes(b"IxM2 partial")
    raise RuntimeError("Error in faiss::FileIOWriter: write failed: No space left on device")


@pytest.mark.parametrize("failing", ["unembedding", "index"])
def test_full_disk_while_loading_a_bundle(
    atlas_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    bundle = tmp_path / "minilm.bundle"
    runner = CliRunner()
    exported = runner.invoke(
        cli, ["--atlas", str(atlas_copy), "export", "minilm", "-o", str(bundle)]
    )
    assert exported.exit_code == 0, exported.output
    before = fingerprint(atlas_copy)
    if failing == "unembedding":
        monkeypatch.setattr(np, "save", _no_space)
    else:
        import faiss

        monkeypatch.setattr(faiss, "write_index", _faiss_fails)
    result = runner.invoke(
        cli, ["--atlas", str(atlas_copy), "load", str(bundle), "--replace"], catch_exceptions=False
    )
    line = assert_one_error_line(_Completed(result.exit_code, result.stdout, result.stderr))
    assert "No space left on device" in line and "The atlas is unchanged" in line
    _assert_intact(atlas_copy, before)
