"""A job of many models on a local Ray cluster (``ray.init(num_cpus=2)``).

In parallel it stores exactly what a serial run stores (every row, ids included, and the same
search results); a worker killed with SIGKILL in the middle of a model is retried and the atlas
is complete; a model that cannot be ingested fails alone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas.core.check import check_atlas
from ingest.jobs import run_job
from ingest.options import IngestOptions
from tests.support.atlas_compare import assert_same_atlas
from tests.support.helpers import quiet

ray = pytest.importorskip("ray", reason="needs Ray: pip install 'svd-atlas[ray]' (CI installs it)")

JOB = [
    IngestOptions(model="minilm", max_rank=4, device="cpu"),
    IngestOptions(model="random:llama-tiny", max_rank=4, device="cpu"),
    IngestOptions(model="minilm", model_id="minilm-tl", processing="tl", max_rank=4, device="cpu"),
]
BUILD_TASK = b"ray::build_task"  # the title Ray gives a worker process while it runs one


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serial") / "atlas"
    assert [o.status for o in run_job(root, JOB, log=quiet)] == ["published"] * 3
    return root


def test_in_parallel_equals_one_after_another(cluster: None, serial: Path, tmp_path: Path) -> None:
    root = tmp_path / "atlas"
    lines: list[str] = []
    outcomes = run_job(root, JOB, ray_address="local", log=lines.append)
    assert [o.status for o in outcomes] == ["published"] * 3, [o.error for o in outcomes]
    assert_same_atlas(root, serial)
    assert check_atlas(root).ok
    assert not any((root / ".staging").iterdir())  # the job's folder is gone
    assert lines[-1].endswith("3/3 done (3 published, 0 failed), 0 running, 0 queued")


def test_a_worker_killed_mid_model_is_retried(cluster: None, serial: Path, tmp_path: Path) -> None:
    root = tmp_path / "atlas"
    killed: list[int] = []

    def kill_one_building_worker() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            for pid in _building_workers():
                if any((root / ".staging").glob("*/*/model.duckdb")):  # mid-model, writing
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_building_worker)
    killer.start()
    outcomes = run_job(root, JOB, ray_address="local", retries=2, log=quiet)
    killer.join()
    assert killed, "no worker was seen building a model"
    assert [o.status for o in outcomes] == ["published"] * 3, [o.error for o in outcomes]
    assert_same_atlas(root, serial)
    assert check_atlas(root).ok


def test_a_bad_model_fails_alone(cluster: None, serial: Path, tmp_path: Path) -> None:
    root = tmp_path / "atlas"
    bad = IngestOptions(model=str(tmp_path / "no-such-folder"), device="cpu")
    outcomes = run_job(root, [JOB[0], bad, *JOB[1:]], ray_address="local", log=quiet)
    assert [o.status for o in outcomes] == ["published", "failed", "published", "published"]
    assert "no-such-folder" in (outcomes[1].error or "")
    assert_same_atlas(root, serial)  # the failure took no ids from the others


def _building_workers() -> list[int]:
    """Worker processes running ``build_task`` now (Ray sets their title)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(BUILD_TASK):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids
