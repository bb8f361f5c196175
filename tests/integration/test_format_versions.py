"""Format versions: an atlas directory, a bundle and a Parquet tree of versions 2 and 1 (made
by ``tests.support.old_formats`` the way earlier svd-atlas versions wrote them) are upgraded by
their one path and then hold what the old one held, as a fresh one has it; newer and too-old
versions are one line.

An atlas directory is upgraded by ``check --repair`` only, atomically: until then every other
command refuses it with a line that says so, and writes nothing. What an upgraded model cannot
have (QK circuits, composition: they need the weights) is refused with one line that says to
re-ingest it, never shown empty; a re-ingest brings them back.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import atlas
from atlas.core import upgrade
from atlas.core.exchange import bundle_format, tree_format
from atlas.core.layout import FORMAT_VERSION, AtlasDir
from atlas.core.repair import repair_atlas
from atlas.server.app import create_app
from tests.support.atlas_compare import TABLE_ORDER, table
from tests.support.helpers import assert_one_error_line, fingerprint, run_cli
from tests.support.old_formats import (
    version_1_atlas,
    version_1_bundle,
    version_1_tree,
    version_2_atlas,
    version_2_bundle,
    version_2_tree,
    version_3_atlas,
)

MODELS = ("random:gpt2-tiny", "second")
OLD = (1, 2)
# searches that reach no QK direction (an older model has none), so old and fresh agree
SEARCHES = (
    ["fire", "--model", "second", "--kind", "ov", "-k", "10"],
    ["water", "--model", "random:gpt2-tiny", "--kind", "mlp_in", "-k", "5"],
    ["--direction", "7", "--kind", "ov"],
)
ADDED = {"positional_embedding", "format_version", "eigen_positivity", "basis"}
REINGEST = "svd-atlas ingest --replace"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny random models, ingested by this version."""
    root = tmp_path_factory.mktemp("fresh") / "atlas"
    for extra in ([], ["--name", "second"]):
        result = run_cli("--atlas", root, "ingest", "random:gpt2-tiny", "--max-rank", "8", *extra)
        assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def old_atlases(fresh: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The fresh atlas as versions 2 and 1 wrote it (read-only: tests upgrade copies)."""
    base = tmp_path_factory.mktemp("old")
    two = version_2_atlas(fresh, base / "v2")
    return {2: two, 1: version_1_atlas(two, base / "v1")}


def _old(old_atlases: dict[int, Path], version: int, dest: Path) -> Path:
    shutil.copytree(old_atlases[version], dest)
    return dest


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


_OLD_ROWS = {  # what of a fresh model an older version held (no QK, no embedding readout)
    "matrices": "WHERE kind <> 'qk'",
    "directions": "WHERE kind <> 'qk'",
    "top_tokens": "WHERE basis = 'unembed' AND direction_id IN "
    "(SELECT direction_id FROM directions WHERE kind <> 'qk')",
}
_OLD_ROWS["top_neurons"] = _OLD_ROWS["token_bags"] = (
    "WHERE direction_id IN (SELECT direction_id FROM directions WHERE kind <> 'qk')"
)


def _assert_holds_the_old_rows(
    upgraded: Path | str,
    fresh: Path | str,
    version: int,
    vectors: bool = True,
    searches: tuple[list[str], ...] = SEARCHES,
) -> None:
    """Every table holds the fresh atlas's rows that the old version had, with the columns
    version 3 added as an older model has them (NULL, ``basis`` 'unembed', ``format_version``
    the old version; ``weight_dtype``, which version 1 did not record, NULL); no composition;
    the same search results."""
    exclude = ADDED | {"n_directions", "n_matrices"} | ({"weight_dtype"} if version == 1 else set())
    exclude |= set() if vectors else {"vector"}
    with atlas.open(upgraded) as a, atlas.open(fresh) as b:
        for name in TABLE_ORDER:
            left, right = table(a, name), table(b, name, _OLD_ROWS.get(name, ""))
            assert sorted(left.column_names) == sorted(right.column_names), name
            keep = [c for c in left.column_names if c not in exclude]
            assert left.num_rows > 0 or name == "coherence_null", name
            assert left.select(keep).equals(right.select(keep)), f"table {name} differs"
        models = a.sql("SELECT * FROM models ORDER BY model_id").to_pylist()
        assert {m["format_version"] for m in models} == {version}
        assert all(m["positional_embedding"] is None for m in models)
        counts = a.sql("SELECT model_id, count(*) AS n FROM directions GROUP BY ALL").to_pylist()
        assert {c["model_id"]: c["n"] for c in counts} == {m["model_id"]: m["n_directions"]
                                                           for m in models}  # fmt: skip
        positivity = a.sql("SELECT count(eigen_positivity) AS n FROM matrices")
        assert positivity["n"][0].as_py() == 0  # never a number it did not measure
        assert a.sql("SELECT DISTINCT basis FROM top_tokens")["basis"].to_pylist() == ["unembed"]
        for name in ("composition", "composition_pairs"):
            assert a.sql(f"SELECT count(*) AS n FROM {name}")["n"][0].as_py() == 0
    for args in searches:
        assert _search(upgraded, *args) == _search(fresh, *args)


def _assert_circuits_refused(root: Path | str, model_id: str, version: int) -> None:
    """Every way to ask for circuits is one line naming the model, its format and the
    re-ingest; a head card says the same in place of its circuits, and a read direction's card
    in place of its tokens through W_E."""
    said = f"model {model_id!r} was atlased by format version {version}"
    with atlas.open(root) as a:
        first = a.sql("SELECT min(direction_id) AS d FROM directions WHERE model_id = ? "
                      "AND kind = 'ov' AND side = 'write'", [model_id])["d"][0].as_py()  # fmt: skip
    for command in (["circuits", model_id], ["circuits", model_id, "1", "0"],
                    ["trace", str(first), "--via", "composition"]):  # fmt: skip
        line = assert_one_error_line(run_cli("--atlas", root, *command))
        assert said in line and REINGEST in line and "QK circuits" in line, line
    card = run_cli("--atlas", root, "show", model_id, "1", "0")
    assert card.returncode == 0, card.stderr
    circuits = [line for line in card.stdout.splitlines() if "circuits:" in line]
    assert len(circuits) == 1 and said in circuits[0] and REINGEST in circuits[0], card.stdout
    reads = run_cli("--atlas", root, "show", str(first - 1))  # its read partner: no W_E rows
    assert reads.returncode == 0, reads.stderr
    (embed,) = [line for line in reads.stdout.splitlines() if "reads (W_E)" in line]
    assert "none stored" in embed and said in embed and REINGEST in embed, reads.stdout
    with TestClient(create_app(str(root))) as client:
        for url in (f"/api/composition?model={model_id}",
                    f"/api/composition?model={model_id}&layer=1&head=0",
                    f"/api/composition/trace/{first}"):  # fmt: skip
            answer = client.get(url)
            assert answer.status_code == 400 and said in answer.json()["error"], url
        card = client.get(f"/api/directions/{first - 1}").json()
        assert card["embed_tokens"] is None and said in card["embed_missing"]
        assert card["tokens"]  # what it has is still shown
        page = client.get(f"/directions/{first - 1}").text
        assert "Reads (W_E): none stored" in page and "re-ingest it" in page


# -- the atlas directory --------------------------------------------------------------------


@pytest.mark.slow  # the fast tier keeps one upgrade path (check --repair from version 1)
@pytest.mark.parametrize("version", OLD)
def test_an_older_atlas_is_refused_by_every_other_command_and_left_alone(
    old_atlases: dict[int, Path], tmp_path: Path, version: int
) -> None:
    old = _old(old_atlases, version, tmp_path / "old")
    before = _everything(old)
    commands = [
        ["search", "fire"],
        ["sql", "SELECT count(*) FROM directions"],
        ["sql", "--write", "CREATE TABLE t AS SELECT 1"],
        ["models"],
        ["circuits", "second"],
        ["ingest", "random:gpt2-tiny", "--name", "third"],
    ]
    for command in commands:
        line = assert_one_error_line(run_cli("--atlas", old, *command))
        assert f"format version {version}" in line, line
        assert "(svd-atlas check --repair) upgrades it" in line, line
    with pytest.raises(atlas.AtlasError, match="`check` with `repair`"):
        atlas.open(old)
    checked = run_cli("--atlas", old, "check")
    assert checked.returncode == 1
    assert f"atlas format version {version}" in checked.stdout
    assert "(svd-atlas check --repair) upgrades it" in checked.stdout
    assert _everything(old) == before


@pytest.mark.parametrize(
    "version",
    [1, pytest.param(2, marks=pytest.mark.slow)],  # 1 goes through 2's upgrade too
)
def test_check_repair_upgrades_an_older_atlas_and_circuits_say_to_reingest(
    fresh: Path, old_atlases: dict[int, Path], tmp_path: Path, version: int
) -> None:
    old = _old(old_atlases, version, tmp_path / "old")
    repaired = run_cli("--atlas", old, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert f"atlas format {version} upgraded to 4" in repaired.stdout
    catalog = json.loads((old / "catalog.json").read_text())
    assert catalog["format_version"] == FORMAT_VERSION == 4
    written = json.loads((old_atlases[version] / "catalog.json").read_text())
    for model_id, entry in catalog["models"].items():  # the same ids
        assert {k: v for k, v in entry.items() if k != "store"} == {
            k: v for k, v in written["models"][model_id].items() if k != "store"
        }
        store = old / entry["store"]
        assert sorted(p.name for p in store.glob("*.faiss")) == ["residual-0000.faiss"]
        assert json.loads((store / "manifest.json").read_text())["format_version"] == 4
    _assert_holds_the_old_rows(old, fresh, version)
    assert run_cli("--atlas", old, "check").returncode == 0
    _assert_circuits_refused(old, "second", version)
    again = run_cli("--atlas", old, "check", "--repair")  # nothing left to do
    assert again.returncode == 0 and "repaired" not in again.stdout

    # a re-ingest brings the circuits back; the other model still says what it lacks
    spec = ("random:gpt2-tiny", "--max-rank", "8", "--name", "second", "--replace")
    assert run_cli("--atlas", old, "ingest", *spec).returncode == 0
    with atlas.open(old) as a:
        bases = a.sql(
            "SELECT DISTINCT basis FROM top_tokens t JOIN directions d USING (direction_id) "
            "WHERE d.model_id = 'second'"
        )["basis"].to_pylist()
        assert sorted(bases) == ["embed", "unembed"]
    edges = run_cli("--atlas", old, "circuits", "second", "--format", "json")
    assert edges.returncode == 0 and json.loads(edges.stdout)["edges"], edges.stderr
    with atlas.open(old) as a, atlas.open(fresh) as b:
        mine = a.composition("second", layer=1, head=0)
        theirs = b.composition("second", layer=1, head=0)
        assert [e["score"] for e in mine["in"]] == [e["score"] for e in theirs["in"]]
    _assert_circuits_refused(old, "random:gpt2-tiny", version)


def test_a_version_3_atlas_is_refused_then_upgraded_by_adding_its_hit_rows(
    fresh: Path, tmp_path: Path
) -> None:
    """Version 4 added each store's hit rows, derived from its tables: until ``check --repair``
    writes them the atlas is refused with one line and left alone; then every store holds the
    fresh one's files, byte for byte, and its searches are the fresh atlas's."""
    old = version_3_atlas(fresh, tmp_path / "old")
    before = _everything(old)
    for command in (["search", "fire"], ["show", "0"]):
        line = assert_one_error_line(run_cli("--atlas", old, *command))
        assert "format version 3" in line and "(svd-atlas check --repair) upgrades it" in line
    assert _everything(old) == before
    repaired = run_cli("--atlas", old, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "atlas format 3 upgraded to 4" in repaired.stdout
    catalog = json.loads((old / "catalog.json").read_text())
    theirs = json.loads((fresh / "catalog.json").read_text())["models"]
    for model_id, entry in catalog["models"].items():
        store, fresh_store = old / entry["store"], fresh / theirs[model_id]["store"]
        files = {p.name: p.read_bytes() for p in store.iterdir() if p.name != "manifest.json"}
        assert files == {
            p.name: p.read_bytes() for p in fresh_store.iterdir() if p.name != "manifest.json"
        }
        manifest = json.loads((store / "manifest.json").read_text())
        assert manifest["format_version"] == FORMAT_VERSION
        assert (
            manifest["members"]
            == json.loads((fresh_store / "manifest.json").read_text())["members"]
        )
    assert run_cli("--atlas", old, "check").returncode == 0
    for search in SEARCHES:
        assert _search(old, *search) == _search(fresh, *search)


@pytest.mark.slow  # the fast tier keeps one upgrade path (check --repair from version 1)
def test_an_hnsw_model_gets_the_index_ingest_builds_today(
    fresh: Path, old_atlases: dict[int, Path], tmp_path: Path
) -> None:
    """HNSW meant above --exact-max: approximate today, unless (as here) too small to train
    codebooks, where ingest builds a flat index whatever --exact-max says."""
    old = version_1_atlas(old_atlases[2], tmp_path / "old", hnsw=True)
    assert run_cli("--atlas", old, "check", "--repair").returncode == 0
    _assert_holds_the_old_rows(old, fresh, 1)


@pytest.mark.slow  # the fast tier keeps one upgrade path (check --repair from version 1)
@pytest.mark.parametrize("version", OLD)
def test_an_older_atlas_that_lost_its_catalog_is_rebuilt_then_upgraded(
    fresh: Path, old_atlases: dict[int, Path], tmp_path: Path, version: int
) -> None:
    old = _old(old_atlases, version, tmp_path / "old")
    (old / "catalog.json").unlink()
    repaired = run_cli("--atlas", old, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "catalog.json rebuilt" in repaired.stdout
    assert f"format {version} upgraded to 4" in repaired.stdout
    _assert_holds_the_old_rows(old, fresh, version)


@pytest.mark.slow  # the fast tier keeps one upgrade path (check --repair from version 1)
def test_a_model_without_vectors_is_upgraded_too(
    fresh: Path, old_atlases: dict[int, Path], tmp_path: Path
) -> None:
    """A model loaded from a --vectors none bundle: no vectors, no index, before and after."""
    bundle = tmp_path / "none.bundle"
    exported = run_cli("--atlas", old_atlases[2], "export", "second", "-o", bundle,
                       "--vectors", "none")  # fmt: skip
    assert exported.returncode == 1  # an older atlas is refused: export from the fresh one
    exported = run_cli("--atlas", fresh, "export", "second", "-o", bundle, "--vectors", "none")
    assert exported.returncode == 0, exported.stderr
    current = tmp_path / "current"
    assert run_cli("--atlas", current, "load", bundle).returncode == 0
    old = version_1_atlas(version_2_atlas(current, tmp_path / "v2"), tmp_path / "old")
    assert run_cli("--atlas", old, "check", "--repair").returncode == 0
    with atlas.open(old) as a:
        assert a.sql("SELECT count(*) AS n FROM directions WHERE vector IS NULL")["n"][0].as_py()
        store = a.reader.store_path("second")
    assert not list(store.glob("*.faiss"))
    assert json.loads((store / "manifest.json").read_text())["vectors"] == "none"
    _assert_holds_the_old_rows(old, current, 1, vectors=False, searches=())


@pytest.mark.slow  # the fast tier keeps one upgrade path (check --repair from version 1)
@pytest.mark.parametrize("where", ["second store", "catalog write"])
def test_an_interrupted_upgrade_leaves_the_atlas_as_it_was(
    fresh: Path,
    old_atlases: dict[int, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    old = _old(old_atlases, 2, tmp_path / "old")
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
    assert json.loads((old / "catalog.json").read_text())["format_version"] == 2
    monkeypatch.undo()
    assert run_cli("--atlas", old, "check", "--repair").returncode == 0
    _assert_holds_the_old_rows(old, fresh, 2)


@pytest.mark.parametrize(
    ("version", "words"),
    [(5, ["made by a newer svd-atlas", "upgrade svd-atlas"]), (0, ["too old", "re-ingest"])],
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
        assert "reads versions 1 to 4" in line
        assert all(word in line for word in words), line
    assert _everything(root) == before


# -- bundles --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(fresh: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "fresh.bundle"
    assert run_cli("--atlas", fresh, "export", "-o", path).returncode == 0
    return path


@pytest.mark.slow  # the fast tier keeps one upgrade path (check --repair from version 1)
@pytest.mark.parametrize("version", OLD)
def test_an_older_bundle_loads_through_its_upgrade(
    fresh: Path, bundle: Path, tmp_path: Path, version: int
) -> None:
    old = version_2_bundle(bundle, tmp_path / "v2.bundle")
    if version == 1:
        old = version_1_bundle(old, tmp_path / "v1.bundle")
    root = tmp_path / "from-old"
    result = run_cli("--atlas", root, "load", old)
    assert result.returncode == 0, result.stderr
    assert run_cli("--atlas", root, "check").returncode == 0
    for store in (root / "store").iterdir():  # a version 1 bundle's index was not kept
        assert not (store / "residual.faiss").exists()
    _assert_holds_the_old_rows(root, fresh, version)
    _assert_circuits_refused(root, "second", version)
    with atlas.open(old) as opened:  # read-only too, the bundle untouched
        assert sorted(opened.model_ids()) == sorted(MODELS)
    exported = tmp_path / "again.bundle"
    assert run_cli("--atlas", root, "export", "-o", exported).returncode == 0
    with tarfile.open(exported) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["format_version"] == bundle_format.FORMAT_VERSION == 3
    again = tmp_path / "again"  # the upgraded models travel as what they are
    assert run_cli("--atlas", again, "load", exported).returncode == 0
    _assert_holds_the_old_rows(again, fresh, version)


@pytest.mark.parametrize(
    ("version", "words"), [(4, ["newer", "upgrade svd-atlas"]), (0, ["too old"])]
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


@pytest.mark.slow  # the fast tier keeps one upgrade path (check --repair from version 1)
@pytest.mark.parametrize("version", OLD)
def test_an_older_tree_reads_through_its_upgrade_without_writing(
    fresh: Path, tree: Path, tmp_path: Path, version: int
) -> None:
    old = version_2_tree(tree, tmp_path / "v2")
    if version == 1:
        old = version_1_tree(old, tmp_path / "v1")
    marker = (old / tree_format.MARKER).read_bytes()
    # without an unembedding (version 1) words are searched in token space: not as fresh
    _assert_holds_the_old_rows(
        old, fresh, version, searches=SEARCHES if version == 2 else SEARCHES[2:]
    )
    with atlas.open(old) as a:
        assert a.reader.has_unembedding("second") == (version == 2)
    if version == 1:  # no unembedding: words are searched in token space
        assert {hit["space"] for hit in _search(old, "fire", "-k", "5")} == {"token"}
    assert run_cli("--atlas", old, "check").returncode == 0
    _assert_circuits_refused(old, "second", version)
    assert (old / tree_format.MARKER).read_bytes() == marker

    # exporting into it writes its marker as version 3; the old model keeps its partitions
    added = run_cli("--atlas", fresh, "export", "second", "--parquet", old)
    assert added.returncode == 0, added.stderr
    written = json.loads((old / tree_format.MARKER).read_text())
    assert written["format_version"] == tree_format.FORMAT_VERSION == 3
    assert {m: (e["unembed"], e["format_version"]) for m, e in written["models"].items()} == {
        "random:gpt2-tiny": (version == 2, version),
        "second": (True, 3),
    }
    _assert_circuits_refused(old, "random:gpt2-tiny", version)
    with atlas.open(old) as a, atlas.open(fresh) as b:
        assert a.composition("second") == b.composition("second")
        assert a.reader.contents_version("random:gpt2-tiny") == version


@pytest.mark.parametrize(
    ("version", "words"), [(4, ["newer", "upgrade svd-atlas"]), (0, ["too old"])]
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
