"""One writer per model id (``atlas.core.model_lock``): a second ingest of a model that is being
ingested is refused before it boots anything; a lock whose process was killed blocks nobody;
two processes ingesting the same model at once leave exactly one published, the other told in
one line, and an atlas that ``check`` passes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas.core.errors import AtlasError
from atlas.core.layout import AtlasDir
from atlas.core.model_lock import ModelBusy, model_lock
from tests.support.helpers import SINGLE_THREAD, assert_one_error_line, run_cli, start_warm_cli

HOLD = """
import sys, time
from atlas.core.layout import AtlasDir
from atlas.core.model_lock import model_lock
with model_lock(AtlasDir(sys.argv[1]), sys.argv[2]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-block random Llama as a local folder (model id ``lockme``): a few seconds to ingest."""
    from atlas.models.random_models import random_config, save_random_model

    config = random_config("llama-tiny")
    config.num_hidden_layers = 1
    return save_random_model("llama-tiny", tmp_path_factory.mktemp("m") / "lockme", config=config)


def test_a_second_ingest_is_refused_before_it_boots(tmp_path: Path, small_model: Path) -> None:
    root = tmp_path / "atlas"
    AtlasDir(root).ensure_writable()
    with model_lock(AtlasDir(root), "lockme"):
        started = time.monotonic()
        result = run_cli("--atlas", root, "ingest", small_model)
        line = assert_one_error_line(result)
        assert "'lockme' is being written" in line and f"process {os.getpid()}" in line
        assert time.monotonic() - started < 5  # refused before booting the model
        # another id is not held up, and neither is the same id in another atlas
        AtlasDir(tmp_path / "b").ensure_writable()
        with model_lock(AtlasDir(root), "other"), model_lock(AtlasDir(tmp_path / "b"), "lockme"):
            pass
        with pytest.raises(ModelBusy), model_lock(AtlasDir(root), "lockme"):
            pass
    assert json.loads((root / "catalog.json").read_text())["models"] == {}


def test_the_lock_of_a_killed_process_blocks_nobody(tmp_path: Path) -> None:
    root = tmp_path / "atlas"
    AtlasDir(root).ensure_writable()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), "lockme"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with (
            pytest.raises(ModelBusy, match=f"process {holder.pid}"),
            model_lock(AtlasDir(root), "lockme"),
        ):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    with model_lock(AtlasDir(root), "lockme"):  # at once: the kernel dropped the dead lock
        pass


@pytest.mark.slow
def test_two_ingests_of_one_model_at_once_publish_it_once(
    tmp_path: Path, small_model: Path
) -> None:
    root = tmp_path / "atlas"
    runs = [start_warm_cli("--atlas", root, "ingest", small_model, env=SINGLE_THREAD) for _ in "ab"]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(run.args, run.returncode, out, err))
    winners = [r for r in results if r.returncode == 0]
    losers = [r for r in results if r.returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, [r.stderr for r in results]
    line = assert_one_error_line(losers[0])
    # refused while the other ran, or (if it started after the other published) already in
    assert "'lockme' is being written" in line or "'lockme' is already in" in line
    catalog = json.loads((root / "catalog.json").read_text())
    assert list(catalog["models"]) == ["lockme"]
    check = run_cli("--atlas", root, "check")
    assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr
    assert not list((root / ".staging").iterdir())


def test_a_writer_joins_an_atlas_another_is_creating_and_never_replaces_its_catalog(
    tmp_path: Path,
) -> None:
    """What two first ingests racing into one new folder see: the other's skeleton (folders, a
    lock, a catalog being written) is an atlas being created, not someone else's folder; and a
    catalog the other created (and may have published into) is never replaced."""
    root = tmp_path / "atlas"
    for name in (".staging", "store"):
        (root / name).mkdir(parents=True)
    (root / ".lock").write_bytes(b"")
    (root / ".catalog.json.0a1b.tmp").write_text("{")
    AtlasDir(root).ensure_writable()
    assert json.loads((root / "catalog.json").read_text())["models"] == {}

    published = json.loads((root / "catalog.json").read_text())
    published["models"]["first"] = {"store": "store/" + "0" * 32}
    (root / "catalog.json").write_text(json.dumps(published))  # the first writer published
    AtlasDir(root)._create_catalog()  # the second saw no catalog a moment before
    assert json.loads((root / "catalog.json").read_text()) == published

    (root / "notes.txt").write_text("mine")  # anything else: someone's folder, refused
    (root / "catalog.json").unlink()
    with pytest.raises(AtlasError, match="is not empty and holds no svd-atlas catalog"):
        AtlasDir(root).ensure_writable()


def test_a_catalog_published_while_the_folder_is_listed_is_no_stranger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers creating one atlas: the second finds no catalog, then lists the folder after
    the first has published one. That catalog is the first writer's, not a stranger's file
    (``ensure_writable`` refused the folder as not empty, about one race in sixteen)."""
    first = AtlasDir(tmp_path / "atlas")
    first.ensure_writable()
    with model_lock(first, "lockme"):  # the first writer's next step: its model's lock
        seen = iter([False])  # the second writer's first look finds no catalog yet
        monkeypatch.setattr(AtlasDir, "exists", lambda self: next(seen, True))
        AtlasDir(tmp_path / "atlas").ensure_writable()
    monkeypatch.undo()
    # a folder whose catalog.json is no file (a folder, a broken link) is refused at once
    (tmp_path / "folder" / "catalog.json").mkdir(parents=True)
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "catalog.json").symlink_to(tmp_path / "nowhere")
    for name in ("folder", "link"):
        with pytest.raises(AtlasError, match="is not empty and holds no svd-atlas catalog"):
            AtlasDir(tmp_path / name).ensure_writable()
        assert [p.name for p in (tmp_path / name).iterdir()] == ["catalog.json"]
