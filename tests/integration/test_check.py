"""`svd-atlas check [--repair]`: damage planted on a copy of an atlas is found, indexes rebuilt."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pytest

import atlas
from atlas.core.check import check_atlas
from atlas.core.indexes import is_exact
from atlas.core.store import sha256_file
from tests.support.helpers import assert_one_error_line, fingerprint, run_cli
from tests.support.old_formats import version_1_atlas

# slow: damages copies of the MiniLM atlas one way each and repairs them
pytestmark = pytest.mark.slow

SHARD = "residual-0000.faiss"  # the first layer's index shard


def _store(root: Path) -> Path:
    catalog = json.loads((root / "catalog.json").read_text())
    return root / catalog["models"]["minilm"]["store"]


def _messages(root: Path) -> list[str]:
    return [f.message for f in check_atlas(root).errors]


def test_check_passes_on_a_fresh_atlas(minilm_atlas: Path) -> None:
    before = fingerprint(minilm_atlas)
    text = run_cli("--atlas", minilm_atlas, "check")
    assert text.returncode == 0, text.stdout
    expected = f"checked 1 models, 13,824 directions in {minilm_atlas}: ok"
    assert text.stdout.splitlines() == [expected]
    as_json = json.loads(run_cli("--atlas", minilm_atlas, "check", "--format", "json").stdout)
    assert as_json["ok"] and as_json["problems"] == [] and as_json["directions"] == 13824
    assert fingerprint(minilm_atlas) == before


def _delete(index: Path) -> None:
    index.unlink()


def _garbage(index: Path) -> None:
    index.write_bytes(b"not a faiss index" * 100)


def _edit(change: Callable[[faiss.Index], None]) -> Callable[[Path], None]:
    def damage(index_path: Path) -> None:
        index = faiss.read_index(str(index_path))
        change(index)
        faiss.write_index(index, str(index_path))

    return damage


def _ids(index: faiss.Index) -> np.ndarray:
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def _drop_ids(index: faiss.Index) -> None:
    index.remove_ids(_ids(index)[[0, 17, -1]])


def _stale_id(index: faiss.Index) -> None:
    index.add_with_ids(np.ones((1, 384), np.float32) / np.sqrt(384), np.array([99_999]))


def _moved_vector(index: faiss.Index) -> None:
    moved = _ids(index)[5:6]
    vector = faiss.downcast_index(index.index).reconstruct(5)  # the vector at position 5
    index.remove_ids(moved)
    index.add_with_ids(-vector[None, :], moved)


DAMAGE = {
    "missing": (_delete, f"{SHARD} is missing"),
    "garbage": (_garbage, f"the FAISS index: {SHARD} cannot be read"),
    "dropped": (_edit(_drop_ids), "3 directions missing from it, 0 stale ids"),
    "stale": (_edit(_stale_id), "0 directions missing from it, 1 stale ids"),
    "moved": (_edit(_moved_vector), "1 vectors differ from DuckDB's"),
}


def _hashes(store: Path) -> dict[str, str]:
    return {path.name: sha256_file(path) for path in sorted(store.iterdir()) if path.is_file()}


@pytest.mark.parametrize("damage", DAMAGE)
def test_repair_rebuilds_a_damaged_index_from_duckdb(atlas_copy: Path, damage: str) -> None:
    store = _store(atlas_copy)
    original = _hashes(store)
    assert SHARD in original and "model.duckdb" in original
    with atlas.open(atlas_copy) as a:
        hits = [(h.direction_id, round(h.score, 5)) for h in a.search("fire", k=10)]
    plant, expected = DAMAGE[damage]
    plant(store / SHARD)

    found = run_cli("--atlas", atlas_copy, "check")
    assert found.returncode == 1
    problems = [line for line in found.stdout.splitlines() if line.startswith("error")]
    assert any(expected in line and "check --repair" in line for line in problems), problems

    repaired = run_cli("--atlas", atlas_copy, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "repaired  minilm  the FAISS index rebuilt from DuckDB" in repaired.stdout
    # rebuilt from DuckDB's vectors, every shard is byte-identical to the one ingest wrote
    assert _hashes(store) == original
    assert not any((atlas_copy / ".staging").iterdir())
    with atlas.open(atlas_copy) as a:
        assert [(h.direction_id, round(h.score, 5)) for h in a.search("fire", k=10)] == hits


def test_damaged_duckdb_is_reported_then_taken_out_and_left_alone(atlas_copy: Path) -> None:
    db = _store(atlas_copy) / "model.duckdb"
    data = bytearray(db.read_bytes())
    # bits flipped in a block that holds table data (a quarter in: the store's first tables;
    # zeroing an unused block would change the checksum but nothing DuckDB reads)
    at = len(data) // 4
    data[at : at + 4096] = bytes(b ^ 0xFF for b in data[at : at + 4096])
    db.write_bytes(bytes(data))
    damaged = sha256_file(db)
    check = run_cli("--atlas", atlas_copy, "check")
    assert check.returncode == 1
    line = next(x for x in check.stdout.splitlines() if "model.duckdb does not match" in x)
    assert "re-ingest the model" in line and "load its bundle again" in line
    unreadable = next(x for x in check.stdout.splitlines() if "cannot be read" in x)
    assert "check --repair" in unreadable
    repaired = run_cli("--atlas", atlas_copy, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "minilm  taken out of the catalog" in repaired.stdout
    assert sha256_file(db) == damaged  # DuckDB data is never rewritten
    with atlas.open(atlas_copy) as a:
        assert a.model_ids() == []


def test_inconsistent_tables_are_each_reported(atlas_copy: Path) -> None:
    con = duckdb.connect(str(_store(atlas_copy) / "model.duckdb"))
    (n_matrices,) = con.sql("SELECT count(*) FROM matrices").fetchall()[0]
    (n_top, top_k), (n_neg,) = (
        con.sql("SELECT count(*), any_value(m.top_k) FROM top_tokens, models m").fetchall()[0],
        con.sql(
            "SELECT count(*) FROM top_tokens WHERE direction_id = 3 AND polarity = 'neg'"
        ).fetchall()[0],
    )
    con.execute("DELETE FROM matrices WHERE matrix_id = (SELECT min(matrix_id) FROM matrices)")
    con.execute("DELETE FROM top_tokens WHERE direction_id = 3 AND polarity = 'neg'")
    con.execute("INSERT INTO top_neurons VALUES (123456, 0, 1, 0.5)")
    con.execute("UPDATE directions SET vector = [2.0 for _ in range(384)] WHERE direction_id = 7")
    con.execute("CHECKPOINT")
    con.close()
    messages = _messages(atlas_copy)
    expected = [
        "model.duckdb does not match its manifest checksum",
        f"matrices has {n_matrices - 1} rows, its manifest says {n_matrices}",
        f"top_tokens has {n_top - n_neg} rows, its manifest says {n_top}",
        f"matrices has {n_matrices - 1} rows, models.n_matrices {n_matrices}, "
        f"the catalog {n_matrices}",
        f"matrices.matrix_id spans 1..{n_matrices - 1} ({n_matrices - 1} distinct); "
        f"the catalog says 0..{n_matrices - 1}",
        "directions rows name a matrix_id that is not in matrices",
        "1 top_neurons rows name a direction_id that is not in directions",
        f"1 directions do not have {2 * top_k} top_tokens rows",
        "1 direction vectors are not unit length",
        "the FAISS index: 1 vectors differ from DuckDB's",
    ]
    for text in expected:
        assert any(text in m for m in messages), (text, messages)


def test_unembedding_of_the_wrong_shape(atlas_copy: Path) -> None:
    np.save(_store(atlas_copy) / "unembed.npy", np.zeros((10, 384), np.float16))
    messages = _messages(atlas_copy)
    assert "unembed.npy has shape (10, 384), expected [d_vocab, d_model] (30522, 384)" in messages


def test_missing_store_and_leftovers(atlas_copy: Path) -> None:
    (atlas_copy / ".staging" / "abandoned").mkdir()
    (atlas_copy / "store" / "orphan").mkdir()
    report = check_atlas(atlas_copy)
    assert report.ok
    info = [f.message for f in report.findings if f.level == "info"]
    assert any("leftover .staging/abandoned" in m for m in info)
    assert any("unreferenced store store/orphan" in m for m in info)
    shutil.rmtree(_store(atlas_copy))
    assert [m for m in _messages(atlas_copy) if "is missing" in m] == [
        f"its store {_store(atlas_copy).relative_to(atlas_copy)} is missing"
    ]


def test_a_model_loaded_without_vectors_has_no_index_by_design(
    minilm_atlas: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "no vectors.bundle"
    exported = run_cli(
        "--atlas", minilm_atlas, "export", "minilm", "-o", bundle, "--vectors", "none"
    )
    assert exported.returncode == 0, exported.stderr
    root = tmp_path / "atlas"
    assert run_cli("--atlas", root, "load", bundle).returncode == 0
    assert not list(_store(root).glob("*.faiss"))
    result = run_cli("--atlas", root, "check", "--repair")
    assert result.returncode == 0, result.stdout
    assert "repaired" not in result.stdout


def test_check_refuses_what_is_not_an_atlas(tmp_path: Path) -> None:
    assert "no atlas at" in assert_one_error_line(run_cli("--atlas", tmp_path / "x", "check"))
    bundle = tmp_path / "file.bundle"
    bundle.write_bytes(b"x")
    assert "is a file" in assert_one_error_line(run_cli("--atlas", bundle, "check"))


@pytest.mark.slow
def test_an_hnsw_index_of_a_version_1_atlas_is_upgraded(atlas_copy: Path, tmp_path: Path) -> None:
    """The first release built HNSW above --exact-max. Such an atlas (format version 1) reads as
    one error line naming check --repair, which upgrades it: today's approximate index, built
    from DuckDB's vectors."""
    old = version_1_atlas(atlas_copy, tmp_path / "old", hnsw=True)
    before = fingerprint(old)

    line = assert_one_error_line(run_cli("--atlas", old, "search", "fire"))
    assert "format version 1" in line and "check --repair" in line
    assert run_cli("--atlas", old, "check").returncode == 1
    assert fingerprint(old) == before
    repaired = run_cli("--atlas", old, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    with atlas.open(old) as a:
        assert a.sql("SELECT index_type FROM models")["index_type"].to_pylist() == ["pq-rerank"]
        assert not is_exact(a.residual_index("minilm"))
        assert len(a.search("fire", k=10)) == 10


@pytest.mark.slow
def test_an_index_of_a_type_svd_atlas_does_not_write_is_rebuilt(atlas_copy: Path) -> None:
    """An HNSW shard in a current store is damage: refused in one line, rebuilt by check
    --repair as models.index_type says, DuckDB left as it was."""
    store = _store(atlas_copy)
    flat = faiss.read_index(str(store / SHARD))
    ids = _ids(flat)
    hnsw = faiss.IndexIDMap(faiss.IndexHNSWFlat(384, 16, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(faiss.downcast_index(flat.index).reconstruct_n(0, flat.ntotal), ids)
    faiss.write_index(hnsw, str(store / SHARD))
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["members"][SHARD] = {
        "bytes": (store / SHARD).stat().st_size,
        "sha256": sha256_file(store / SHARD),
    }
    (store / "manifest.json").write_text(json.dumps(manifest))
    database = sha256_file(store / "model.duckdb")

    line = assert_one_error_line(run_cli("--atlas", atlas_copy, "search", "fire"))
    assert "IndexHNSWFlat" in line and "check --repair" in line
    assert run_cli("--atlas", atlas_copy, "check").returncode == 1
    repaired = run_cli("--atlas", atlas_copy, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert sha256_file(store / "model.duckdb") == database
    with atlas.open(atlas_copy) as a:
        assert is_exact(a.residual_index("minilm"))
        assert len(a.search("fire", k=10)) == 10
