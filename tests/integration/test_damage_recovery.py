"""One damaged model never takes the atlas down; lost catalogs and manifests are rebuilt; ids
are never reused, by ingest, replace or load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import atlas
from atlas.core.check import check_atlas
from tests.support.helpers import assert_one_error_line, fingerprint, run_cli
from tests.support.tiny_models import ingest_loaded, tiny_gpt2

# slow: damages and recovers copies of the MiniLM atlas, re-ingesting it once
pytestmark = pytest.mark.slow


def _store(root: Path, model_id: str) -> Path:
    catalog = json.loads((root / "catalog.json").read_text())
    return root / catalog["models"][model_id]["store"]


def _truncate(path: Path, keep: int = 100_000) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(keep)


def test_a_truncated_store_leaves_the_other_models_working(two: Path, tmp_path: Path) -> None:
    _truncate(_store(two, "minilm") / "model.duckdb")
    models = run_cli("--atlas", two, "models", "--format", "json")
    assert models.returncode == 0, models.stderr
    assert [m["model_id"] for m in json.loads(models.stdout)] == ["tiny"]
    notes = [line for line in models.stderr.splitlines() if "minilm" in line]
    assert len(notes) == 1 and "left out" in notes[0] and "Traceback" not in models.stderr

    sql = run_cli("--atlas", two, "sql", "SELECT DISTINCT model_id FROM directions")
    assert sql.returncode == 0 and "tiny" in sql.stdout and "minilm" not in sql.stdout
    search = run_cli("--atlas", two, "search", "fire", "--model", "tiny", "--format", "json")
    assert search.returncode == 0 and json.loads(search.stdout)
    line = assert_one_error_line(run_cli("--atlas", two, "search", "fire", "--model", "minilm"))
    assert "damaged" in line
    bundle = tmp_path / "tiny.bundle"
    assert run_cli("--atlas", two, "export", "tiny", "-o", bundle).returncode == 0
    with pytest.warns(atlas.core.errors.AtlasWarning, match="minilm"):
        a = atlas.open(two)
    with a:
        assert a.model_ids() == ["tiny"] and a.damaged.keys() == {"minilm"}

    check = run_cli("--atlas", two, "check")
    assert check.returncode == 1 and "minilm" in check.stdout and "cannot be read" in check.stdout

    other = run_cli("--atlas", two, "load", bundle, "--replace")  # a new write still works
    assert other.returncode == 0, other.stderr


def test_a_foreign_duckdb_file_is_a_damaged_store(two: Path) -> None:
    """A valid DuckDB file that is not the model's store (another model's, or none at all) is
    left out like a truncated one, and check --repair takes it out of the catalog."""
    import duckdb

    db = _store(two, "minilm") / "model.duckdb"
    db.unlink()
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE models (x INT)")
    for args in (("models",), ("search", "storm"), ("trace", "13824"), ("sql", "FROM models")):
        result = run_cli("--atlas", two, *args, "--format", "json")
        assert result.returncode == 0, (args, result.stderr)
        assert "minilm" in result.stderr and "not an svd-atlas store" in result.stderr
        rows = json.loads(result.stdout)
        assert rows and all(r["model_id"] == "tiny" and "x" not in r for r in rows), args
    check = run_cli("--atlas", two, "check")
    assert check.returncode == 1 and "not an svd-atlas store" in check.stdout
    repaired = run_cli("--atlas", two, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert check_atlas(two).ok


def test_a_catalog_pointing_outside_the_atlas_is_malformed(two: Path, tmp_path: Path) -> None:
    catalog = json.loads((two / "catalog.json").read_text())
    outside = tmp_path / "elsewhere"
    shutil.copytree(_store(two, "tiny"), outside)
    catalog["models"]["tiny"]["store"] = f"store/../../{outside.name}"
    (two / "catalog.json").write_text(json.dumps(catalog))
    line = assert_one_error_line(run_cli("--atlas", two, "models"))
    assert "malformed" in line and "not store/<id>" in line
    repaired = run_cli("--atlas", two, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert json.loads((two / "catalog.json").read_text())["models"]["tiny"]["store"].startswith(
        "store/"
    )
    assert check_atlas(two).ok


@pytest.mark.parametrize("recovery", ["check --repair", "ingest --replace"])
def test_a_damaged_store_is_recovered(two: Path, recovery: str) -> None:
    _truncate(_store(two, "minilm") / "model.duckdb")
    if recovery == "check --repair":
        result = run_cli("--atlas", two, "check", "--repair")
        assert result.returncode == 0 and "taken out of the catalog" in result.stdout
        expected = ["tiny"]
    else:
        result = run_cli("--atlas", two, "ingest", "minilm", "--replace", "--max-rank", "4")
        assert result.returncode == 0, result.stderr
        expected = ["minilm", "tiny"]
    assert check_atlas(two).ok
    listing = run_cli("--atlas", two, "models", "--format", "json")
    assert listing.stderr == "" and [m["model_id"] for m in json.loads(listing.stdout)] == expected


def test_a_truncated_unembedding_is_one_line_and_named_by_check(two: Path) -> None:
    _truncate(_store(two, "minilm") / "unembed.npy", keep=1000)
    line = assert_one_error_line(run_cli("--atlas", two, "search", "fire", "--model", "minilm"))
    assert "unembed.npy is damaged" in line
    direction = run_cli("--atlas", two, "search", "--direction", "432", "--model", "minilm")
    assert direction.returncode == 0  # searches that need no unembedding still work
    report = check_atlas(two)
    findings = [f for f in report.errors if "unembed" in f.message]
    assert any("cannot be read" in f.message for f in findings)
    assert all(f.model_id == "minilm" and not f.repairable for f in findings)
    check = run_cli("--atlas", two, "check")
    assert "--repair" not in next(x for x in check.stdout.splitlines() if "unembed" in x)


DEEP = "[" * 100_000 + "]" * 100_000  # Python's decoder meets it with a RecursionError


@pytest.mark.parametrize("damage", ["deleted", "garbage", "malformed", "nested"])
def test_a_lost_catalog_is_rebuilt_with_its_counters(two: Path, damage: str) -> None:
    before = json.loads((two / "catalog.json").read_text())
    # a replaced model's ids are retired: the rebuilt counters must stay past them too
    if damage == "deleted":
        (two / "catalog.json").unlink()
    elif damage == "garbage":
        (two / "catalog.json").write_bytes(b"\x00not json")
    elif damage == "nested":
        (two / "catalog.json").write_text(DEEP)
    else:
        (two / "catalog.json").write_text(json.dumps({"format": "svd-atlas", "format_version": 1}))
    line = assert_one_error_line(run_cli("--atlas", two, "models"))
    assert "check --repair" in line
    line = assert_one_error_line(run_cli("--atlas", two, "ingest", "minilm", "--name", "x"))
    assert "check --repair" in line
    repaired = run_cli("--atlas", two, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    after = json.loads((two / "catalog.json").read_text())
    assert after["models"] == before["models"]
    assert after["next_direction_id"] >= before["next_direction_id"]
    assert after["next_matrix_id"] >= before["next_matrix_id"]


def test_a_lost_or_corrupt_manifest_is_recomputed_from_verified_data(two: Path) -> None:
    store = _store(two, "tiny")
    original = json.loads((store / "manifest.json").read_text())
    for damage in ("delete", "corrupt", "nested"):
        if damage == "delete":
            (store / "manifest.json").unlink()
        elif damage == "nested":
            (store / "manifest.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
        else:
            (store / "manifest.json").write_text('{"members": {"model.duckdb": 3}}')
        check = run_cli("--atlas", two, "check")
        assert check.returncode == 1 and "manifest.json cannot be read" in check.stdout
        assert "check --repair" in check.stdout
        assert run_cli("--atlas", two, "check", "--repair").returncode == 0
        rebuilt = json.loads((store / "manifest.json").read_text())
        assert rebuilt["members"] == original["members"]  # the same files, the same checksums
        assert rebuilt["counts"] == original["counts"] and rebuilt["ids"] == original["ids"]


def test_a_manifest_that_names_paths_is_refused_not_followed(two: Path, tmp_path: Path) -> None:
    """check reads no file outside the store, even one the manifest lists with its true size
    and checksum (a tampered atlas would learn whether any file holds given content)."""
    store = _store(two, "tiny")
    original = json.loads((store / "manifest.json").read_text())
    outside = tmp_path / "outside.faiss"
    outside.write_bytes(b"secret")
    listed = {"bytes": 6, "sha256": hashlib.sha256(b"secret").hexdigest()}
    for name in (str(outside), os.path.relpath(outside, store)):
        manifest = {**original, "members": {**original["members"], name: listed}}
        (store / "manifest.json").write_text(json.dumps(manifest))
        check = run_cli("--atlas", two, "check")
        assert check.returncode == 1, check.stdout
        assert f"manifest.json cannot be read (it lists {name!r}, which is not a file name" in (
            check.stdout
        )
        assert run_cli("--atlas", two, "check", "--repair").returncode == 0
        assert json.loads((store / "manifest.json").read_text())["members"] == original["members"]


def test_counters_below_the_ids_in_use_are_raised_past_every_id_on_disk(two: Path) -> None:
    """Lowered counters (the catalog's and the reservations') would hand out ids in use."""
    before = json.loads((two / "catalog.json").read_text())
    for name in ("catalog.json", ".reserved"):
        data = json.loads((two / name).read_text())
        (two / name).write_text(json.dumps({**data, "next_direction_id": 5, "next_matrix_id": 1}))
    check = run_cli("--atlas", two, "check")
    assert check.returncode == 1 and "next_direction_id is below an id in use" in check.stdout
    assert "raises it past every id on disk" in check.stdout
    repaired = run_cli("--atlas", two, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    for name in ("catalog.json", ".reserved"):
        after = json.loads((two / name).read_text())
        assert after["next_direction_id"] >= before["next_direction_id"], name
        assert after["next_matrix_id"] >= before["next_matrix_id"], name


def test_a_store_two_models_name_is_found_and_the_catalog_rebuilt(two: Path) -> None:
    """An edited catalog naming one store twice: check says so (not that the store's ids
    overlap themselves), and the repair rebuilds the catalog from the stores."""
    catalog = json.loads((two / "catalog.json").read_text())
    catalog["models"]["copy"] = dict(catalog["models"]["tiny"])
    (two / "catalog.json").write_text(json.dumps(catalog))
    check = run_cli("--atlas", two, "check")
    store = catalog["models"]["tiny"]["store"]
    assert f"models 'tiny', 'copy' name one store, {store}" in check.stdout, check.stdout
    assert "rebuilds it from the stores' manifests" in check.stdout
    assert f"direction ids of {store} and {store} overlap" not in check.stdout
    assert run_cli("--atlas", two, "check", "--repair").returncode == 0
    assert sorted(json.loads((two / "catalog.json").read_text())["models"]) == ["minilm", "tiny"]


def test_manifest_of_damaged_data_is_not_recomputed(two: Path) -> None:
    store = _store(two, "tiny")
    (store / "manifest.json").unlink()
    _truncate(store / "model.duckdb")
    run_cli("--atlas", two, "check", "--repair")
    assert not (store / "manifest.json").exists()  # nothing vouches for damaged data


def test_ids_are_never_reused_by_replace_and_load(two: Path, tmp_path: Path) -> None:
    first = json.loads((two / "catalog.json").read_text())
    # replacing tiny retires its ids; a bundle whose ids sit in that retired range must not
    # get them back, even though no published model uses them now
    bundle = tmp_path / "tiny.bundle"
    assert run_cli("--atlas", two, "export", "tiny", "-o", bundle).returncode == 0
    retired = first["models"]["tiny"]
    loaded = run_cli("--atlas", two, "load", bundle, "--replace")
    assert loaded.returncode == 0 and "remapped" in loaded.stdout
    after = json.loads((two / "catalog.json").read_text())["models"]["tiny"]
    assert after["first_direction_id"] >= first["next_direction_id"]
    assert after["first_direction_id"] != retired["first_direction_id"]
    # into an empty atlas the bundle keeps its ids
    fresh = tmp_path / "fresh"
    kept = run_cli("--atlas", fresh, "load", bundle)
    assert kept.returncode == 0 and "remapped" not in kept.stdout
    catalog = json.loads((fresh / "catalog.json").read_text())
    assert catalog["models"]["tiny"]["first_direction_id"] == retired["first_direction_id"]


def test_an_interrupted_ingest_reserves_but_publishes_nothing(two: Path) -> None:
    """Reserved ids are never handed out twice, yet the catalog is unchanged until a publish."""
    from atlas.core.layout import AtlasDir
    from atlas.core.publish import reserve_ids

    before = fingerprint(two)
    (first,) = reserve_ids(AtlasDir(two), [(10, 2)])
    assert fingerprint(two) == before
    (second,) = reserve_ids(AtlasDir(two), [(10, 2)])
    assert second.first_direction_id == first.first_direction_id + 10
    ingest_loaded(two, tiny_gpt2(seed=5), "tiny2")
    catalog = json.loads((two / "catalog.json").read_text())
    assert catalog["models"]["tiny2"]["first_direction_id"] >= second.first_direction_id + 10
