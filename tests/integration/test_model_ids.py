"""Model ids follow one rule (``atlas.core.model_ids``, docs/storage.md#model-ids): hub names and
random shapes pass; traversal, list separators and control characters are refused at ingest
(``--name`` and derived ids), at the load of a bundle, and a Parquet tree or an atlas holding
such an id names it in one note and stays readable for its other models."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import urllib.parse
from pathlib import Path

import pytest

import atlas
from atlas.core.errors import AtlasError
from atlas.core.model_ids import check_model_id, model_id_problem
from tests.support.helpers import assert_one_error_line, fingerprint, run_cli
from tests.support.tiny_models import ingest_loaded, tiny_gpt2

GOOD = ["minilm", "gpt2", "random:gpt2-small", "EleutherAI/pythia-70m", "org/name.v2", "a..b"]
BAD = [
    "../../evil", "..", ".", "/abs/path", "org/", "a//b", "org/../x", "a\\b", "C:\\x", "a,b",
    ",", "a\nb", "a\x1b[31mb", "tab\there", " padded", "padded ", "", "x" * 201,
]  # fmt: skip


@pytest.mark.parametrize("model_id", GOOD)
def test_hub_names_and_random_shapes_follow_the_rule(model_id: str) -> None:
    assert model_id_problem(model_id) is None
    assert check_model_id(model_id) == model_id


@pytest.mark.parametrize("model_id", BAD)
def test_traversal_separators_and_control_characters_break_it(model_id: str) -> None:
    assert model_id_problem(model_id) is not None
    with pytest.raises(AtlasError, match="is not allowed"):
        check_model_id(model_id)


@pytest.fixture(scope="module")
def tiny_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ids") / "atlas"
    ingest_loaded(root, tiny_gpt2(n_layers=2), "tiny")
    return root


@pytest.mark.parametrize("name", ["../../evil", "a,b", "a\x1bb", "/etc/x", "a\\b"])
def test_ingest_refuses_a_bad_name_before_booting(tmp_path: Path, name: str) -> None:
    result = run_cli("--atlas", tmp_path / "atlas", "ingest", "random:llama-tiny", "--name", name)
    line = assert_one_error_line(result)
    assert "is not allowed" in line and "boot" not in result.stderr
    assert (
        not (tmp_path / "atlas" / "catalog.json").exists()
        or not json.loads((tmp_path / "atlas" / "catalog.json").read_text())["models"]
    )


def test_an_id_derived_from_a_folder_name_is_checked_too(tmp_path: Path) -> None:
    folder = tmp_path / "a,b"
    folder.mkdir()
    line = assert_one_error_line(run_cli("--atlas", tmp_path / "atlas", "ingest", folder))
    assert "'a,b' is not allowed" in line


def _rewrite_manifest_id(bundle: Path, out: Path, model_id: str) -> None:
    """``bundle`` with its (first) model renamed in the manifest only; members unchanged."""
    with tarfile.open(bundle, "r:") as src, tarfile.open(out, "w:") as dst:
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "manifest.json":
                manifest = json.loads(data)
                manifest["models"][0]["model_id"] = model_id
                data = json.dumps(manifest).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


def test_load_refuses_a_bundle_with_a_bad_id(tiny_atlas: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "tiny.svdatlas"
    assert run_cli("--atlas", tiny_atlas, "export", "-o", bundle).returncode == 0
    evil = tmp_path / "evil.svdatlas"
    _rewrite_manifest_id(bundle, evil, "../../evil")
    target = tmp_path / "target"
    shutil.copytree(tiny_atlas, target)
    before = fingerprint(target)
    line = assert_one_error_line(run_cli("--atlas", target, "load", evil))
    assert "'../../evil' is not allowed" in line and "nothing was loaded" in line
    assert fingerprint(target) == before
    assert "'../../evil' is not allowed" in assert_one_error_line(run_cli("open", evil))


def _plant_model(tree: Path, good: str, bad: str) -> None:
    """A copy of ``good``'s partitions under the id ``bad``, named in the marker: what a tree
    written by hand, or before the rule, can hold."""
    marker = json.loads((tree / "_svd_atlas.json").read_text())
    for table in marker["tables"]:
        src = tree / table / f"model_id={urllib.parse.quote(good, safe='')}"
        shutil.copytree(src, tree / table / f"model_id={urllib.parse.quote(bad, safe='')}")
    marker["models"][bad] = marker["models"][good]
    (tree / "_svd_atlas.json").write_text(json.dumps(marker))


@pytest.mark.parametrize("bad", ["../../evil", "a,b", "a\x1bb"])
def test_a_tree_holding_a_bad_id_names_it_and_reads_the_others(
    tiny_atlas: Path, tmp_path: Path, bad: str
) -> None:
    tree = tmp_path / "tree"
    assert run_cli("--atlas", tiny_atlas, "export", "--parquet", tree).returncode == 0
    _plant_model(tree, "tiny", bad)
    result = run_cli("--atlas", tree, "sql", "SELECT model_id, count(*) AS n FROM directions "
                     "GROUP BY ALL", "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r["model_id"] for r in json.loads(result.stdout)] == ["tiny"]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "left out: its id is not allowed" in notes[0]
    assert f"model {bad!r} left out" in notes[0]  # named, a control character escaped
    with pytest.warns(UserWarning, match="left out"), atlas.open(tree) as a:
        assert a.model_ids() == ["tiny"]
        assert list(a.damaged) == [bad]
        with pytest.raises(AtlasError, match="not allowed"):
            a.spectrum(bad)


def test_an_atlas_whose_catalog_holds_a_bad_id_reads_the_others(
    tiny_atlas: Path, tmp_path: Path
) -> None:
    root = tmp_path / "atlas"
    shutil.copytree(tiny_atlas, root)
    catalog = json.loads((root / "catalog.json").read_text())
    catalog["models"]["a,b"] = catalog["models"]["tiny"]
    (root / "catalog.json").write_text(json.dumps(catalog))
    result = run_cli("--atlas", root, "models", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert [m["model_id"] for m in json.loads(result.stdout)] == ["tiny"]
    assert "note: model 'a,b' left out" in result.stderr
