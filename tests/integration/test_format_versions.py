"""Format versions: an atlas directory, a bundle and a Parquet tree of the previous version
(made by ``tests.support.old_formats`` the way earlier svd-atlas versions wrote them) are
upgraded by their one path and then equal fresh ones; newer and too-old versions are one line.

An atlas directory is upgraded by ``check --repair`` only, atomically: until then every other
command refuses it with a line that says so, and writes nothing.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

import atlas
from atlas.core import upgrade
from atlas.core.exchange import bundle_format, tree_format
from atlas.core.layout import FORMAT_VERSION, AtlasDir
from atlas.core.repair import repair_atlas
from tests.support.atlas_compare import assert_tables_equal
from tests.support.helpers import assert_one_error_line, fingerprint, run_cli
from tests.support.old_formats import version_1_atlas, version_1_bundle, version_1_tree

MODELS = ("random:gpt2-tiny", "second")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny random models, ingested by this version."""
    root = tmp_path_factory.mktemp("fresh") / "atlas"
    for extra in ([], ["--name", "second"]):
        result = run_cli("--atlas", root, "ingest", "random:gpt2-tiny", "--max-rank", "8", *extra)
        assert result.returncode == 0, result.stderr
    return root


def _everything(root: Path) -> dict[str, bytes]:
    """Every file of the atlas directory, by path (lock files aside: a writer takes its model's
    lock before it reads the catalog)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock" and p.parent.name != ".locks"
    }


def _search(root: Path | str, *args: str) -> Any:
    result = run_cli("--atlas", root, "search", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _assert_equals_fresh(upgraded: Path | str, fresh: Path | str, where: str = "") -> None:
    """Every table equal to the fresh atlas's (``models.weight_dtype``, which version 1 did
    not record, is NULL), and the same search results."""
    with atlas.open(upgraded) as a, atlas.open(fresh) as b:
        assert_tables_equal(a, b, exclude=("weight_dtype",))
        dtypes = a.sql(f"SELECT weight_dtype FROM models {where}")["weight_dtype"].to_pylist()
        assert dtypes and all(d is None for d in dtypes)
    for args in (["fire", "-k", "10"], ["water", "--kind", "ov", "-k", "5"], ["--direction", "7"]):
        assert _search(upgraded, *args) == _search(fresh, *args)


# -- the atlas directory --------------------------------------------------------------------


def test_a_version_1_atlas_is_refused_by_every_other_command_and_left_alone(
    fresh: Path, tmp_path: Path
) -> None:
    old = version_1_atlas(fresh, tmp_path / "old")
    before = _everything(old)
    commands = [
        ["search", "fire"],
        ["sql", "SELECT count(*) FROM directions"],
        ["sql", "--write", "CREATE TABLE t AS SELECT 1"],
        ["models"],
        ["ingest", "random:gpt2-tiny", "--name", "third"],
    ]
    for command in commands:
        line = assert_one_error_line(run_cli("--atlas", old, *command))
        assert "format version 1" in line and "(svd-atlas check --repair) upgrades it" in line
    with pytest.raises(atlas.AtlasError, match="`check` with `repair`"):
        atlas.open(old)
    checked = run_cli("--atlas", old, "check")
    assert checked.returncode == 1
    assert (
        "atlas format version 1" in checked.stdout
        and "(svd-atlas check --repair) upgrades it" in checked.stdout
    )
    assert _everything(old) == before


def test_check_repair_upgrades_a_version_1_atlas_to_equal_a_fresh_one(
    fresh: Path, tmp_path: Path
) -> None:
    old = version_1_atlas(fresh, tmp_path / "old")
    repaired = run_cli("--atlas", old, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "atlas format 1 upgraded to 2" in repaired.stdout
    catalog = json.loads((old / "catalog.json").read_text())
    assert catalog["format_version"] == FORMAT_VERSION == 2
    published = json.loads((fresh / "catalog.json").read_text())
    for model_id, entry in catalog["models"].items():  # the same ids
        assert {k: v for k, v in entry.items() if k != "store"} == {
            k: v for k, v in published["models"][model_id].items() if k != "store"
        }
        store = old / entry["store"]
        assert sorted(p.name for p in store.glob("*.faiss")) == ["residual-0000.faiss"]
        assert json.loads((store / "manifest.json").read_text())["format_version"] == 2
    _assert_equals_fresh(old, fresh)
    assert run_cli("--atlas", old, "check").returncode == 0
    again = run_cli("--atlas", old, "check", "--repair")  # nothing left to do
    assert again.returncode == 0 and "repaired" not in again.stdout
    added = run_cli("--atlas", old, "ingest", "random:gpt2-tiny", "--name", "third")
    assert added.returncode == 0, added.stderr


def test_an_hnsw_model_gets_the_index_ingest_builds_today(fresh: Path, tmp_path: Path) -> None:
    """HNSW meant above --exact-max: approximate today, unless (as here) too small to train
    codebooks, where ingest builds a flat index whatever --exact-max says."""
    old = version_1_atlas(fresh, tmp_path / "old", hnsw=True)
    assert run_cli("--atlas", old, "check", "--repair").returncode == 0
    _assert_equals_fresh(old, fresh)


def test_a_version_1_atlas_that_lost_its_catalog_is_rebuilt_then_upgraded(
    fresh: Path, tmp_path: Path
) -> None:
    old = version_1_atlas(fresh, tmp_path / "old")
    (old / "catalog.json").unlink()
    repaired = run_cli("--atlas", old, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "catalog.json rebuilt" in repaired.stdout and "upgraded to 2" in repaired.stdout
    _assert_equals_fresh(old, fresh)


def test_a_model_without_vectors_is_upgraded_too(fresh: Path, tmp_path: Path) -> None:
    """A model loaded from a --vectors none bundle: no vectors, no index, before and after."""
    bundle = tmp_path / "none.bundle"
    exported = run_cli("--atlas", fresh, "export", "second", "-o", bundle, "--vectors", "none")
    assert exported.returncode == 0, exported.stderr
    current = tmp_path / "current"
    assert run_cli("--atlas", current, "load", bundle).returncode == 0
    old = version_1_atlas(current, tmp_path / "old")
    assert run_cli("--atlas", old, "check", "--repair").returncode == 0
    with atlas.open(old) as a, atlas.open(current) as b:
        assert_tables_equal(a, b, exclude=("weight_dtype", "vector"))
        assert a.sql("SELECT count(*) AS n FROM directions WHERE vector IS NULL")["n"][0].as_py()
        store = a.reader.store_path("second")
    assert not list(store.glob("*.faiss"))
    assert json.loads((store / "manifest.json").read_text())["vectors"] == "none"
    assert _search(old, "fire", "-k", "5") == _search(current, "fire", "-k", "5")


@pytest.mark.parametrize("where", ["second store", "catalog write"])
def test_an_interrupted_upgrade_leaves_the_atlas_as_it_was(
    fresh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    old = version_1_atlas(fresh, tmp_path / "old")
    before = fingerprint(old)
    if where == "second store":
        stores: list[Path] = []
        real = upgrade.write_index_from_database

        def failing(database: Path, dest: Path) -> None:
            stores.append(dest)
            if len(stores) == 2:
                raise RuntimeError("injected")
            real(database, dest)

        monkeypatch.setattr(upgrade, "write_index_from_database", failing)
    else:

        def failing_catalog(self: AtlasDir, catalog: Any) -> None:
            raise RuntimeError("injected")

        monkeypatch.setattr(AtlasDir, "write_catalog", failing_catalog)
    with pytest.raises(RuntimeError, match="injected"):
        repair_atlas(old)
    assert fingerprint(old) == before
    assert json.loads((old / "catalog.json").read_text())["format_version"] == 1
    monkeypatch.undo()
    assert run_cli("--atlas", old, "check", "--repair").returncode == 0
    _assert_equals_fresh(old, fresh)


@pytest.mark.parametrize(
    ("version", "words"),
    [(3, ["made by a newer svd-atlas", "upgrade svd-atlas"]), (0, ["too old", "re-ingest"])],
)
def test_atlas_versions_it_cannot_read_are_one_line(
    fresh: Path, tmp_path: Path, version: int, words: list[str]
) -> None:
    root = tmp_path / "atlas"
    shutil.copytree(fresh, root)
    catalog = json.loads((root / "catalog.json").read_text())
    (root / "catalog.json").write_text(json.dumps({**catalog, "format_version": version}))
    before = _everything(root)
    commands = (
        ["search", "fire"],
        ["check"],
        ["check", "--repair"],
        ["ingest", "random:gpt2-tiny"],
    )
    for command in commands:
        line = assert_one_error_line(run_cli("--atlas", root, *command))
        assert f"atlas format version {version}" in line
        assert all(word in line for word in words), line
    assert _everything(root) == before


# -- bundles --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(fresh: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "fresh.bundle"
    assert run_cli("--atlas", fresh, "export", "-o", path).returncode == 0
    return path


def test_a_version_1_bundle_loads_through_its_upgrade(bundle: Path, tmp_path: Path) -> None:
    old = version_1_bundle(bundle, tmp_path / "old.bundle")
    for root, source in ((tmp_path / "from-old", old), (tmp_path / "from-new", bundle)):
        result = run_cli("--atlas", root, "load", source)
        assert result.returncode == 0, result.stderr
        assert run_cli("--atlas", root, "check").returncode == 0
    for store in (tmp_path / "from-old" / "store").iterdir():  # its index was not kept
        assert not (store / "residual.faiss").exists()
    _assert_equals_fresh(tmp_path / "from-old", tmp_path / "from-new")
    with atlas.open(old) as opened:  # read-only too, the bundle untouched
        assert sorted(opened.model_ids()) == sorted(MODELS)
    exported = tmp_path / "again.bundle"
    assert run_cli("--atlas", tmp_path / "from-old", "export", "-o", exported).returncode == 0
    with tarfile.open(exported) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["format_version"] == bundle_format.FORMAT_VERSION == 2


@pytest.mark.parametrize(
    ("version", "words"), [(3, ["newer", "upgrade svd-atlas"]), (0, ["too old"])]
)
def test_bundle_versions_it_cannot_read_are_one_line(
    bundle: Path, tmp_path: Path, version: int, words: list[str]
) -> None:
    with tarfile.open(bundle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    manifest = {**json.loads(members[0][1]), "format_version": version}
    payload = json.dumps(manifest).encode()
    members[0][0].size = len(payload)
    other = tmp_path / "other.bundle"
    with tarfile.open(other, "w") as tar:
        for member, data in [(members[0][0], payload), *members[1:]]:
            tar.addfile(member, io.BytesIO(data))
    line = assert_one_error_line(run_cli("--atlas", tmp_path / "atlas", "load", other))
    assert f"bundle format version {version}" in line and all(w in line for w in words), line
    assert not (tmp_path / "atlas").exists()


# -- Parquet trees --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(fresh: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tree") / "tree"
    assert run_cli("--atlas", fresh, "export", "--parquet", out).returncode == 0
    return out


def test_a_version_1_tree_reads_through_its_upgrade_without_writing(
    fresh: Path, tree: Path, tmp_path: Path
) -> None:
    old = version_1_tree(tree, tmp_path / "old")
    marker = (old / tree_format.MARKER).read_bytes()
    with atlas.open(old) as a, atlas.open(tree) as b:
        assert_tables_equal(a, b)
        assert not any(a.reader.has_unembedding(m) for m in MODELS)
    hits = _search(old, "fire", "-k", "5")
    assert {hit["space"] for hit in hits} == {"token"}  # no unembedding: words in token space
    assert _search(old, "--direction", "7") == _search(tree, "--direction", "7")
    assert run_cli("--atlas", old, "check").returncode == 0
    assert (old / tree_format.MARKER).read_bytes() == marker

    # exporting into it writes its marker as version 2, the old models' entries upgraded
    added = run_cli("--atlas", fresh, "export", "second", "--parquet", old)
    assert added.returncode == 0, added.stderr
    written = json.loads((old / tree_format.MARKER).read_text())
    assert written["format_version"] == tree_format.FORMAT_VERSION == 2
    assert {m: e["unembed"] for m, e in written["models"].items()} == {
        "random:gpt2-tiny": False,
        "second": True,
    }


@pytest.mark.parametrize(
    ("version", "words"), [(3, ["newer", "upgrade svd-atlas"]), (0, ["too old"])]
)
def test_tree_versions_it_cannot_read_are_one_line(
    fresh: Path, tree: Path, tmp_path: Path, version: int, words: list[str]
) -> None:
    other = tmp_path / "tree"
    shutil.copytree(tree, other)
    marker = json.loads((other / tree_format.MARKER).read_text())
    (other / tree_format.MARKER).write_text(json.dumps({**marker, "format_version": version}))
    before = _everything(other)
    for command in (
        ["--atlas", other, "search", "fire"],
        ["--atlas", fresh, "export", "--parquet", other],
    ):
        line = assert_one_error_line(run_cli(*command))
        assert f"Parquet tree format version {version}" in line
        assert all(w in line for w in words), line
    assert _everything(other) == before
