"""The façade writes: ``import atlas`` alone creates an atlas, ingests, exports, loads a bundle
into a second atlas and checks (and repairs) it, and stores what the command line stores."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import atlas
from tests.support.helpers import assert_one_error_line, run_cli

MODEL = "random:gpt2-tiny"  # 3 blocks of GPT-2's architecture: a few seconds to ingest
OPTIONS = {"device": "cpu", "top_k": 5, "progress": False}
DIRECTIONS = "SELECT * FROM directions ORDER BY direction_id"


def _rows(location: Path, query: str = DIRECTIONS) -> list[dict[str, object]]:
    with atlas.open(location) as a:
        return a.sql(query).to_pylist()


def _shard(root: Path) -> Path:
    catalog = json.loads((root / "catalog.json").read_text())
    store = root / catalog["models"][MODEL]["store"]
    return store / "residual-0000.faiss"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, atlas.IngestResult]]:
    """An atlas created and filled through the façade alone."""
    root = tmp_path_factory.mktemp("facade") / "new" / "atlas"  # not there yet
    with atlas.open(root, write=True) as a:
        assert a.models() == []
        result = a.ingest(MODEL, **OPTIONS)
        # the handle sees what it wrote, without being opened again
        assert [m["model_id"] for m in a.models()] == [MODEL]
    yield root, result


def test_ingest_says_what_it_ingested(written: tuple[Path, atlas.IngestResult]) -> None:
    root, result = written
    (count,) = _rows(root, "SELECT count(*) AS n FROM directions")
    assert result.model_ids == [MODEL]
    assert result.directions == count["n"] > 0
    assert result.seconds > 0
    (model,) = result.models
    assert (model.status, model.spec, model.error) == ("published", MODEL, None)
    assert model.report is not None and model.report.counts["directions"] == count["n"]


def test_the_facade_stores_what_the_command_line_stores(
    written: tuple[Path, atlas.IngestResult], tmp_path: Path
) -> None:
    root, _ = written
    cli_root = tmp_path / "cli"
    done = run_cli("--atlas", cli_root, "ingest", MODEL, "--device", "cpu", "--top-k", "5")
    assert done.returncode == 0, done.stderr
    assert _rows(root) == _rows(cli_root)
    tokens = "SELECT * FROM top_tokens ORDER BY direction_id, polarity, rank"
    assert _rows(root, tokens) == _rows(cli_root, tokens)


def test_export_load_and_check_a_second_atlas(
    written: tuple[Path, atlas.IngestResult], tmp_path: Path
) -> None:
    root, _ = written
    bundle = tmp_path / "tiny.svdatlas"
    with atlas.open(root) as a:
        a.export(bundle)
    second = tmp_path / "second"
    with atlas.open(second, write=True) as b:
        (loaded,) = b.load(bundle)
        assert (loaded.model_id, loaded.replaced) == (MODEL, False)
        assert loaded.n_directions == len(_rows(root))
        report = b.check()
        assert report.ok and report.errors == [] and report.models == 1
        assert report.directions == loaded.n_directions
        assert b.search("fire", k=3)  # searchable at once, through the same handle
    assert _rows(second) == _rows(root)


def test_check_finds_a_damaged_index_and_repair_fixes_it(
    written: tuple[Path, atlas.IngestResult], tmp_path: Path
) -> None:
    root, _ = written
    bundle = tmp_path / "tiny.svdatlas"
    with atlas.open(root) as a:
        a.export(bundle)
    damaged = tmp_path / "damaged"
    atlas.load(damaged, bundle)  # a new atlas, from the module-level function
    shard = _shard(damaged)
    original = _sha(shard)
    shard.write_bytes(b"not a faiss index" * 100)
    with atlas.open(damaged, write=True) as a:
        found = a.check()
        assert not found.ok
        assert {f.model_id for f in found.errors} == {MODEL}
        assert all(f.message and f.repairable for f in found.errors)
        fixed = a.check(repair=True)
        assert fixed.ok and fixed.repaired
        assert a.check().ok
    assert _sha(shard) == original  # rebuilt from DuckDB: what the ingest wrote, byte for byte


def test_a_read_only_handle_refuses_to_write(written: tuple[Path, atlas.IngestResult]) -> None:
    root, _ = written
    before = (root / "catalog.json").read_bytes()
    with atlas.open(root) as a:
        for write in (
            lambda: a.ingest(MODEL, replace=True),
            lambda: a.load(root / "missing.svdatlas"),
            lambda: a.check(repair=True),
        ):
            with pytest.raises(atlas.AtlasError) as err:
                write()
            message = str(err.value)
            assert "opened read-only: open it with write=True" in message
            assert "--" not in message  # the library names no command-line flag
        assert a.check().ok  # checking is reading
    assert (root / "catalog.json").read_bytes() == before


def test_unknown_or_misplaced_options_are_one_atlas_error(tmp_path: Path) -> None:
    with atlas.open(tmp_path / "a", write=True) as a:
        with pytest.raises(atlas.AtlasError, match="ingest has no option 'topk'"):
            a.ingest(MODEL, topk=5)
        with pytest.raises(atlas.AtlasError, match="name names one model"):
            a.ingest(MODEL, "random:llama-tiny", name="x")
        with pytest.raises(atlas.AtlasError, match="give ray too"):
            a.ingest(MODEL, retries=2)
        with pytest.raises(atlas.AtlasError, match="MODEL string or a"):
            a.ingest(3)
        bad = {
            "top_k": ("10", "top_k must be an integer from 1 to 1,000, not '10'"),
            "max_rank": (0, "max_rank must be an integer of 1 or more, not 0"),
            "gap_tol": (float("nan"), "gap_tol must be a number from 0 to 1, not nan"),
            "device": ("gpu", "device must be one of auto, cpu, cuda, not 'gpu'"),
            "replace": ("yes", "replace must be True or False, not 'yes'"),
        }
        for option, (value, message) in bad.items():
            with pytest.raises(atlas.AtlasError) as err:
                a.ingest(MODEL, **{option: value})
            assert str(err.value) == message
        assert a.models() == []  # nothing was booted or written


@pytest.mark.slow  # three ingests; the façade's job is also in test_jobs
def test_a_job_reports_each_model_and_raises_after_a_failure(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with pytest.raises(atlas.IngestFailed) as failed:
        atlas.ingest(root, (MODEL, "first"), "random:nope", **OPTIONS)
    models = failed.value.result.models
    assert [(m.model_id, m.status) for m in models] == [
        ("first", "published"),
        ("random:nope", "failed"),
    ]
    assert "unknown random shape" in (models[1].error or "")
    assert failed.value.result.model_ids == ["first"] == [r["model_id"] for r in _models(root)]
    again = atlas.ingest(root, (MODEL, "first"), (MODEL, "second"), **OPTIONS)
    assert [m.status for m in again.models] == ["skipped", "published"]
    assert again.model_ids == ["second"]


def _models(root: Path) -> list[dict[str, object]]:
    with atlas.open(root) as a:
        return a.models()


def test_the_cli_check_and_load_go_through_the_facade(
    written: tuple[Path, atlas.IngestResult], tmp_path: Path
) -> None:
    root, _ = written
    bundle = tmp_path / "b.svdatlas"
    assert run_cli("--atlas", root, "export", "-o", bundle).returncode == 0
    loaded = run_cli("--atlas", tmp_path / "c", "load", bundle)
    assert loaded.returncode == 0 and f"loaded {MODEL!r}" in loaded.stdout
    checked = run_cli("--atlas", tmp_path / "c", "check")
    assert checked.returncode == 0 and checked.stdout.rstrip().endswith(": ok")
    line = assert_one_error_line(
        run_cli("--atlas", root, "ingest", MODEL, "--name", "a", "--from", os.devnull)
    )
    assert "--name names one model" in line


@pytest.mark.slow  # saves, ingests and boots a model: about 7 s
def test_local_models_load_with_the_hub_on_and_no_network_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local folders are read with ``local_files_only``: with the hub enabled (as in a user's
    notebook) no request goes out, and the hub settings are never flipped, not even while a
    loader runs (recorded as each transformers loader is called, and as the ingest logs)."""
    import httpx
    import huggingface_hub.constants as hub_constants
    import transformers

    from atlas.models.loading import load_model
    from atlas.models.random_models import save_random_model

    folder = save_random_model("gpt2-tiny", tmp_path / "gpt2-tiny")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    requests: list[str] = []

    def no_network(_client: object, request: httpx.Request, *_a: object, **_k: object) -> None:
        requests.append(str(request.url))
        raise httpx.ConnectError("no network in this test", request=request)

    monkeypatch.setattr(httpx.Client, "send", no_network)
    seen: list[tuple[str | None, str | None, bool]] = []

    def log(_message: str) -> None:
        env = os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE")
        seen.append((*env, hub_constants.HF_HUB_OFFLINE))

    for loader in (transformers.AutoConfig, transformers.AutoTokenizer):
        monkeypatch.setattr(loader, "from_pretrained", _spy(loader.from_pretrained, log))
    result = atlas.ingest(tmp_path / "a", str(folder), device="cpu", top_k=5, log=log)
    assert result.directions > 0
    bridge = load_model(str(folder), "cpu").bridge  # what edit boots: the whole model
    assert bridge.cfg.n_layers == 3
    assert requests == []
    assert seen and set(seen) == {(None, None, False)}


def _spy(load: Callable[..., Any], record: Callable[[str], None]) -> Callable[..., Any]:
    def spied(*args: Any, **kwargs: Any) -> Any:
        record("")
        return load(*args, **kwargs)

    return spied


@pytest.mark.slow  # ingests a model, exports and loads it: about 5 s
def test_the_readme_writing_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
    (code,) = [b for b in blocks if "write=True" in b]
    monkeypatch.chdir(tmp_path)
    exec(code, {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"['{MODEL}'] ") and printed[-1] == "True []"
    assert _rows(tmp_path / "copy" / "atlas") == _rows(tmp_path / "demo" / "atlas")


def test_a_closed_write_handle_neither_reads_nor_writes(tmp_path: Path) -> None:
    a = atlas.open(tmp_path / "a", write=True)
    a.close()
    for call in (lambda: a.models(), lambda: a.ingest(MODEL), lambda: a.check(repair=True)):
        with pytest.raises(atlas.AtlasError, match="is closed"):
            call()
    assert _models(tmp_path / "a") == []
