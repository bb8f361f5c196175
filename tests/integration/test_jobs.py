"""A job of many models, one after another in this process (``svd-atlas ingest A B ...``).

Each model of a job is stored exactly as its own ingest would store it, ids included; a model
that fails does not stop the others; running the job again skips what is published.
"""

from __future__ import annotations

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

JOB = [
    IngestOptions(model="minilm", max_rank=4, device="cpu"),
    IngestOptions(model="random:llama-tiny", max_rank=4, device="cpu"),
    IngestOptions(model="minilm", model_id="minilm-tl", processing="tl", max_rank=4, device="cpu"),
]


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job's models ingested by three separate ingests, in the job's order."""
    root = tmp_path_factory.mktemp("one-by-one") / "atlas"
    for options in JOB:
        ingest(root, options, log=quiet, progress=False)
    return root


def test_a_job_stores_what_separate_ingests_store(one_by_one: Path, tmp_path: Path) -> None:
    root = tmp_path / "atlas"
    outcomes = run_job(root, JOB, log=quiet)
    assert [(o.model_id, o.status) for o in outcomes] == [
        ("minilm", "published"),
        ("random:llama-tiny", "published"),
        ("minilm-tl", "published"),
    ]
    assert_same_atlas(root, one_by_one)
    assert check_atlas(root).ok


def test_a_failing_model_fails_alone_and_a_rerun_skips_the_published(
    one_by_one: Path, tmp_path: Path
) -> None:
    root = tmp_path / "atlas"
    bad = IngestOptions(model="random:no-such-shape", device="cpu")
    outcomes = run_job(root, [JOB[0], bad, JOB[1], JOB[2]], log=quiet)
    assert [o.status for o in outcomes] == ["published", "failed", "published", "published"]
    assert "unknown random shape 'no-such-shape'" in (outcomes[1].error or "")
    assert_same_atlas(root, one_by_one)  # the failure took no ids from the others

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


def test_job_files_read_as_command_lines(tmp_path: Path) -> None:
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
    zoo.write_text("random:llama-tiny\nminilm --name minilm-2  # again\n", encoding="utf-8")
    common = ("--max-rank", "4", "--device", "cpu")
    first = run_cli("--atlas", root, "ingest", "minilm", "--from", zoo, *common, env=SINGLE_THREAD)
    assert first.returncode == 0, first.stderr
    assert "[job] published random:llama-tiny" in first.stderr
    lines = first.stdout.splitlines()
    assert "job of 3 models: 3 published, 0 skipped (already in the atlas), 0 failed" in lines
    again = run_cli("--atlas", root, "ingest", "minilm", "random:nope", *common, env=SINGLE_THREAD)
    error = assert_one_error_line(again)
    assert "1 of 2 models failed (first: random:nope: unknown random shape" in error
    assert "skipped minilm: already in the atlas" in again.stderr
    with atlas.open(root) as a:
        assert a.model_ids() == ["minilm", "minilm-2", "random:llama-tiny"]


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
