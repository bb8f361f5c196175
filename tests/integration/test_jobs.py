"""A job of many models (``svd-atlas ingest A B ...``): one after another in this process, and
in parallel on a local Ray cluster (``ray.init(num_cpus=2)``).

Each model of a job is stored exactly as its own ingest would store it (every row, ids
included, and the same search results), serially or on Ray; a model that fails does not stop
the others nor take their ids; a worker killed with SIGKILL in the middle of a model is
retried and the atlas is complete; running the job again skips what is published.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import atlas
from atlas.core.check import check_atlas
from atlas.core.errors import AtlasError
from ingest.job import IngestOptions, ingest
from ingest.jobs import run_job
from ingest.options import read_model_list
from tests.support.atlas_compare import assert_same_atlas
from tests.support.helpers import SINGLE_THREAD, assert_one_error_line, quiet, run_cli

pytestmark = pytest.mark.slow  # starts a local Ray cluster and runs ingests in worker processes

JOB = [  # small models of real layouts: Ray's scheduling, not the models' size, is under test
    IngestOptions(model="random:gpt2-tiny", max_rank=4, device="cpu"),
    IngestOptions(model="random:llama-tiny", max_rank=4, device="cpu"),
    IngestOptions(
        model="random:gpt2-tiny", model_id="gpt2-tl", processing="tl", max_rank=4, device="cpu"
    ),
]
GPT2 = "random:gpt2-tiny"
BAD = IngestOptions(model="random:no-such-shape", device="cpu")
BUILD_TASK = b"ray::build_task"  # the title Ray gives a worker process while it runs one


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Every ingest of this module computes as a Ray worker does: Ray gives a task of one CPU
    ``OMP_NUM_THREADS=1``, and a different number of threads rounds differently (vectors of
    nearly degenerate directions then differ by a few 1e-5, past the comparison's 1e-5)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job's models ingested by three separate ingests, in the job's order."""
    root = tmp_path_factory.mktemp("one-by-one") / "atlas"
    for options in JOB:
        ingest(root, options, log=quiet)
    return root


def test_a_job_stores_what_separate_ingests_store_and_a_failure_stays_alone(
    one_by_one: Path, tmp_path: Path
) -> None:
    root = tmp_path / "atlas"
    lines: list[str] = []
    outcomes = run_job(root, [JOB[0], BAD, *JOB[1:]], log=lines.append)
    assert [(o.model_id, o.status) for o in outcomes] == [
        ("random:gpt2-tiny", "published"),
        ("random:no-such-shape", "failed"),
        ("random:llama-tiny", "published"),
        ("gpt2-tl", "published"),
    ]
    assert "unknown random shape 'no-such-shape'" in (outcomes[1].error or "")
    assert_same_atlas(root, one_by_one)  # the failure took no ids from the others
    assert check_atlas(root).ok
    assert lines[-1].endswith("4/4 done (3 published, 1 failed), 0 running, 0 queued")

    again = run_job(root, JOB, log=quiet)
    assert [o.status for o in again] == ["skipped"] * 3
    assert_same_atlas(root, one_by_one)
    replaced = run_job(root, [IngestOptions(**{**vars(JOB[1]), "replace": True})], log=quiet)
    assert replaced[0].status == "published"
    with atlas.open(root) as a, atlas.open(one_by_one) as b:
        old = b.sql("SELECT max(direction_id) AS d FROM directions")["d"][0].as_py()
        first = a.sql(
            "SELECT min(direction_id) AS d FROM directions WHERE model_id = 'random:llama-tiny'"
        )["d"][0].as_py()
        assert first > old  # a replaced model gets fresh ids


def test_two_models_under_one_name_are_refused_before_anything_runs(tmp_path: Path) -> None:
    job = [
        IngestOptions(model="minilm"),
        IngestOptions(model="random:llama-tiny", model_id="minilm"),
    ]
    with pytest.raises(AtlasError, match="would both be stored as 'minilm'"):
        run_job(tmp_path / "atlas", job, log=quiet)
    assert not (tmp_path / "atlas").exists()


def test_job_files_read_as_command_lines() -> None:
    lines = [
        "# a zoo",
        "minilm",
        "",
        "'/models/my model' --name mine   # a folder with a space",
        "random:llama-tiny --name tiny",
    ]
    assert read_model_list(lines, "zoo.txt") == [
        ("minilm", None),
        ("/models/my model", "mine"),
        ("random:llama-tiny", "tiny"),
    ]
    for bad, message in (
        (["minilm --replace"], "zoo.txt line 1: expected MODEL or MODEL --name ID"),
        (["'unclosed"], "zoo.txt line 1: No closing quotation"),
        (["# nothing", ""], "zoo.txt names no model"),
    ):
        with pytest.raises(AtlasError, match=message):
            read_model_list(bad, "zoo.txt")


def test_cli_job_from_a_file_and_again(tmp_path: Path) -> None:
    root = tmp_path / "atlas"
    zoo = tmp_path / "zoo.txt"
    zoo.write_text("random:llama-tiny\nrandom:gpt2-tiny --name tiny-2  # again\n", encoding="utf-8")
    common = ("--max-rank", "4", "--device", "cpu")
    first = run_cli("--atlas", root, "ingest", GPT2, "--from", zoo, *common, env=SINGLE_THREAD)
    assert first.returncode == 0 and "[job]" not in first.stderr, first.stderr  # piped: quiet
    lines = first.stdout.splitlines()
    assert "job of 3 models: 3 published, 0 skipped (already in the atlas), 0 failed" in lines
    assert ["random:llama-tiny", "published"] in [line.split()[:2] for line in lines]
    again = run_cli("--atlas", root, "ingest", GPT2, "random:nope", *common, env=SINGLE_THREAD)
    error = assert_one_error_line(again)
    assert "1 of 2 models failed (first: random:nope: unknown random shape" in error
    assert [GPT2, "skipped"] in [line.split()[:2] for line in again.stdout.splitlines()]
    with atlas.open(root) as a:
        assert a.model_ids() == [GPT2, "random:llama-tiny", "tiny-2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("minilm", "random:llama-tiny", "--name", "x"), "--name names one model"),
        (("--ray", "minilm", "random:llama-tiny"), "--ray 'minilm': an address is auto"),
        ((), "give a MODEL"),
    ],
)
def test_cli_job_misuse_is_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli("--atlas", tmp_path / "atlas", "ingest", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "atlas" / "catalog.json").exists()


# -- on a local Ray cluster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip(
        "ray", reason="needs Ray: pip install 'svd-atlas[ray]' (the test extra has it; CI runs it)"
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_on_ray_in_parallel_equals_one_after_another(
    ray_cluster: None, one_by_one: Path, tmp_path: Path
) -> None:
    root = tmp_path / "atlas"
    bad = IngestOptions(model=str(tmp_path / "no-such-folder"), device="cpu")
    lines: list[str] = []
    outcomes = run_job(root, [JOB[0], bad, *JOB[1:]], ray_address="local", log=lines.append)
    statuses = [o.status for o in outcomes]
    assert statuses == ["published", "failed", "published", "published"], outcomes
    assert "no-such-folder" in (outcomes[1].error or "")
    assert_same_atlas(root, one_by_one)  # ids included: the failure took none
    assert check_atlas(root).ok
    assert not any((root / ".staging").iterdir())  # the job's folder is gone
    assert lines[-1].endswith("4/4 done (3 published, 1 failed), 0 running, 0 queued")


def test_on_ray_a_worker_killed_mid_model_is_retried(
    ray_cluster: None, one_by_one: Path, tmp_path: Path
) -> None:
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
    assert_same_atlas(root, one_by_one)
    assert check_atlas(root).ok


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
