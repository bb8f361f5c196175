"""Every number shown is right, or refused (issue 23): damaged indexes when they are used, and
values that are wrong whatever their checksums say, in stores, bundles and Parquet trees.

The oracle of a score is the cosine of the query with the vector DuckDB stores, computed here
with numpy from the healthy atlas; a refusal is one line naming the model and its fix.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

import atlas
from atlas.core.errors import DamagedIndex
from atlas.core.store import sha256_file
from atlas.server.app import create_app
from query.vectors import text_residual_vector
from tests.integration.test_bundle_hostile import DIRECTIONS, read_members, refused, write_bundle
from tests.support.helpers import (
    assert_one_error_line,
    fingerprint,
    run_cli,
)
from tests.support.old_formats import version_1_tree

# slow: a sweep of damaged and foreign indexes, values and trees
pytestmark = pytest.mark.slow

INDEX = "residual-0000.faiss"


def _store(root: Path, model_id: str = "minilm") -> Path:
    catalog = json.loads((root / "catalog.json").read_text())
    return root / catalog["models"][model_id]["store"]


@pytest.fixture(scope="module")
def oracle(minilm_atlas: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The healthy atlas's stored vectors (row = direction id) and the query vector of fire."""
    with atlas.open(minilm_atlas) as a:
        rows = a.sql("SELECT vector FROM directions ORDER BY direction_id")
        vectors = np.array(rows["vector"].to_pylist(), np.float64)
        q, _ = text_residual_vector(a.reader, "minilm", ["fire"])
    yield vectors, np.asarray(q, np.float64)


def _flip(path: Path, offset: int, mask: int = 0xA5, length: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    start = offset % len(data)
    for i in range(start, min(start + length, len(data))):
        data[i] ^= mask
    path.write_bytes(bytes(data))


def _refusal(result: object, model_id: str = "minilm") -> str:
    line = assert_one_error_line(result)  # type: ignore[arg-type]
    assert f"model {model_id!r}" in line and "check --repair" in line, line
    return line


@pytest.mark.parametrize("offset", [0, 40, 200_000, 7_000_000, -80_000, -5_000])
def test_flipped_index_bytes_give_right_scores_or_one_line(
    atlas_copy: Path, oracle: tuple[np.ndarray, np.ndarray], offset: int
) -> None:
    """4 KB flipped in the header, the vectors or the id map: every score shown is the stored
    vectors' cosine, or the command refuses in one line; nothing on disk changes."""
    vectors, q = oracle
    _flip(_store(atlas_copy) / INDEX, offset)
    before = fingerprint(atlas_copy)
    searched = run_cli("--atlas", atlas_copy, "search", "fire", "-k", "10", "--format", "json")
    traced = run_cli("--atlas", atlas_copy, "trace", "432", "--min-cos", "0.2", "--format", "json")
    assert searched.returncode == 0 or _refusal(searched)
    assert traced.returncode == 0 or _refusal(traced)
    if searched.returncode == 0:
        for hit in json.loads(searched.stdout):
            expected = abs(float(vectors[hit["direction_id"]] @ q))
            assert hit["score"] == pytest.approx(expected, abs=1e-5)
    if traced.returncode == 0:
        origin = vectors[432]
        for step in json.loads(traced.stdout):
            if step["via"] == "residual" and step["hop"] == 1:
                expected = abs(float(vectors[step["direction_id"]] @ origin))
                assert step["cos"] == pytest.approx(expected, abs=1e-5) and step["cos"] >= 0.2
    assert fingerprint(atlas_copy) == before
    # ``check`` finds what the search may have been spared
    assert run_cli("--atlas", atlas_copy, "check").returncode == 1


def test_flipped_vector_bytes_are_refused_where_the_index_answers(atlas_copy: Path) -> None:
    """The reported case: scores of 1e26 from a damaged index are now a refusal."""
    _flip(_store(atlas_copy) / INDEX, 200_000, mask=0xFF)
    for command in (["search", "fire"], ["trace", "432"], ["search", "--direction", "432"]):
        line = _refusal(run_cli("--atlas", atlas_copy, *command))
        assert "disagrees with the stored vectors" in line, line
    with atlas.open(atlas_copy) as a, pytest.raises(DamagedIndex, match="`check` with `repair`"):
        a.search("fire")
    repaired = run_cli("--atlas", atlas_copy, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert run_cli("--atlas", atlas_copy, "search", "fire").returncode == 0


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(100_000)


def _swap_in_tiny(root: Path) -> None:
    shutil.copy(_store(root, "tiny") / INDEX, _store(root) / INDEX)


@pytest.mark.parametrize("damage", ["truncated", "swapped"])
def test_a_structurally_wrong_index_is_refused_before_use(two: Path, damage: str) -> None:
    {"truncated": lambda: _truncate(_store(two) / INDEX), "swapped": lambda: _swap_in_tiny(two)}[
        damage
    ]()
    before = fingerprint(two)
    for command in (["search", "fire", "--model", "minilm"], ["trace", "432"]):
        line = _refusal(run_cli("--atlas", two, *command))
        assert "manifest" in line, line  # its size disagrees with the manifest
    assert fingerprint(two) == before


def test_another_models_index_with_a_matching_manifest_is_refused_by_its_width(two: Path) -> None:
    """Even with the manifest rewritten to the swapped file's size, the index's width, count
    and ids disagree with the model: refused before FAISS is asked anything."""
    _swap_in_tiny(two)
    manifest_path = _store(two) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    path = _store(two) / INDEX
    manifest["members"][INDEX] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest_path.write_text(json.dumps(manifest))
    for command in (["search", "fire", "--model", "minilm"], ["trace", "432"]):
        line = _refusal(run_cli("--atlas", two, *command))
        assert "width 64" in line and "d_model is 384" in line, line


def _listed_as_is(store: Path) -> None:
    """The manifest rewritten to the index files as they are now (sizes and checksums)."""
    manifest_path = store / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    members = manifest["members"]
    for name in [n for n in members if n.startswith("residual-")]:
        del members[name]
    for path in sorted(store.glob("residual-*.faiss")):
        members[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest_path.write_text(json.dumps(manifest))


def _l2_metric(store: Path) -> None:
    """The id map's and its flat index's metric set to L2 (FAISS's header field after the
    4-byte tag, d, ntotal, two reserved words and is_trained), the vectors untouched."""
    data = bytearray((store / INDEX).read_bytes())
    assert data[:4] == b"IxMp" and data[37:41] == b"IxFI"
    for at in (33, 37 + 33):
        data[at : at + 4] = (1).to_bytes(4, "little")
    (store / INDEX).write_bytes(bytes(data))


def _copied_shard(store: Path) -> None:
    shutil.copy(store / INDEX, store / "residual-0001.faiss")


@pytest.mark.parametrize(
    ("damage", "said"),
    [(_l2_metric, "does not score by inner product"), (_copied_shard, "27,648 vectors")],
)
def test_an_index_listed_as_is_but_not_of_the_model_is_refused_and_repaired(
    atlas_copy: Path, damage: Callable[[Path], None], said: str
) -> None:
    """Damage that no checksum catches (the manifest lists the files as they are): an L2
    metric (where a trace would find nothing), a shard held twice. Every use refuses it in
    one line; check finds it and check --repair rebuilds it."""
    store = _store(atlas_copy)
    damage(store)
    _listed_as_is(store)
    for command in (["search", "fire"], ["trace", "432", "--min-cos", "0.15"]):
        line = _refusal(run_cli("--atlas", atlas_copy, *command))
        assert said in line, line
    found = run_cli("--atlas", atlas_copy, "check")
    assert found.returncode == 1 and "FAISS index" in found.stdout + found.stderr
    assert run_cli("--atlas", atlas_copy, "check", "--repair").returncode == 0
    assert run_cli("--atlas", atlas_copy, "check").returncode == 0
    trace = run_cli("--atlas", atlas_copy, "trace", "432", "--min-cos", "0.15", "--format", "json")
    assert trace.returncode == 0 and len(json.loads(trace.stdout)) > 1, trace.stderr


def test_a_missing_index_file_is_damage_not_a_model_without_vectors(atlas_copy: Path) -> None:
    """The manifest lists the file its writer wrote: without it every use refuses the index,
    naming the file and the repair (not "no vectors here", the state of a model loaded from a
    bundle exported without them)."""
    (_store(atlas_copy) / INDEX).unlink()
    for command in (["search", "fire"], ["search", "--direction", "432"], ["trace", "432"]):
        line = _refusal(run_cli("--atlas", atlas_copy, *command))
        assert f"index files are missing; its manifest lists {INDEX}" in line, line
        assert "vectors" not in line, line
    assert run_cli("--atlas", atlas_copy, "check", "--repair").returncode == 0
    assert run_cli("--atlas", atlas_copy, "search", "--direction", "432").returncode == 0


def test_healthy_models_stay_searchable_with_a_note(two: Path) -> None:
    _truncate(_store(two) / INDEX)
    with atlas.open(two) as healthy_tiny:
        expected = [h.direction_id for h in healthy_tiny.search("fire", model="tiny", k=5)]
    result = run_cli("--atlas", two, "search", "fire", "--space", "residual", "-k", "5",
                     "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [h["direction_id"] for h in json.loads(result.stdout)] == expected
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: not searched")]
    assert len(notes) == 1 and "'minilm'" in notes[0] and "check --repair" in notes[0], notes
    with atlas.open(two) as a, warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        hits = a.search("fire", space="residual", k=5)
    assert [h.direction_id for h in hits] == expected
    assert any("not searched" in n and "'minilm'" in n for n in hits.notes)
    # the token space needs no index: minilm is still searched there
    assert run_cli("--atlas", two, "search", "fire", "--space", "token").returncode == 0


def test_the_server_reports_a_damaged_model_and_serves_the_others(two: Path) -> None:
    _truncate(_store(two) / INDEX)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = create_app(str(two))
    with TestClient(app) as client:
        health = client.get("/api/health").json()
        assert health["status"] == "degraded" and list(health["damaged"]) == ["minilm"]
        assert "`check` with `repair`" in health["damaged"]["minilm"]  # no CLI flag over HTTP
        refused_search = client.get("/api/search", params={"text": "fire", "model": "minilm"})
        assert refused_search.status_code == 503
        assert "`check` with `repair`" in refused_search.json()["error"]
        ok = client.get("/api/search", params={"text": "fire", "model": "tiny", "k": 3})
        assert ok.status_code == 200 and len(ok.json()["hits"]) == 3
        both = client.get("/api/search", params={"text": "fire", "space": "residual"})
        assert both.status_code == 200
        assert any("'minilm'" in n for n in both.json()["notes"])
        assert {h["model_id"] for h in both.json()["hits"]} == {"tiny"}


# -- values ---------------------------------------------------------------------------------


def _rehash(store: Path) -> None:
    """Recompute the manifest's checksums, as a hostile editor would."""
    manifest_path = store / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["members"]:
        path = store / name
        manifest["members"][name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest_path.write_text(json.dumps(manifest))


VALUE_EDITS = {
    "nan sigma": ("UPDATE directions SET sigma = 'nan' WHERE direction_id = 433", "sigma is nan"),
    "negative sigma": ("UPDATE directions SET sigma = -1 WHERE direction_id = 433", "negative"),
    "increasing sigma": (
        "UPDATE directions SET sigma = 100 WHERE direction_id = 433",
        "singular values do not increase",
    ),
    "non-unit vector": (
        "UPDATE directions SET vector = [0.5 for _ in range(384)] WHERE direction_id = 433",
        "not unit length",
    ),
    "nan vector": (
        "UPDATE directions SET vector = ['nan'::FLOAT for _ in range(384)] "
        "WHERE direction_id = 433",
        "not unit length (or not finite)",
    ),
    "wrong token scores": ("UPDATE top_tokens SET score = score * 1.5", "top_tokens score"),
    "null in a vector": (
        "UPDATE directions SET vector = list_concat([NULL::FLOAT], vector[2:])::FLOAT[384] "
        "WHERE direction_id = 433",
        "1 direction vectors hold NULL values",
    ),
    "time past 9999": (
        "UPDATE models SET ingested_at = TIMESTAMPTZ '20000-01-01 00:00:00+00'",
        "a time in the atlas's data is past the year 9999",
    ),
    "heads past the model's": (  # MiniLM has 12 a layer
        "UPDATE models SET n_heads = 6",
        "(layer 0 head 6 ov read sv 0): outside the model's 6 layers of 6 heads",
    ),
}


@pytest.mark.parametrize("edit", list(VALUE_EDITS))
def test_check_finds_bad_values_in_a_store_with_recomputed_checksums(
    atlas_copy: Path, edit: str
) -> None:
    statement, words = VALUE_EDITS[edit]
    store = _store(atlas_copy)
    con = duckdb.connect(str(store / "model.duckdb"))
    con.execute(statement)
    con.execute("CHECKPOINT")
    con.close()
    _rehash(store)
    before = fingerprint(atlas_copy)
    result = run_cli("--atlas", atlas_copy, "check")
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("error")]
    assert len(errors) >= 1 and any(words in e and "minilm" in e for e in errors), result.stdout
    if "sigma" in edit:
        assert any("direction 433 (layer 0 head 6 ov" in e for e in errors), errors
    assert fingerprint(atlas_copy) == before


@pytest.fixture(scope="module")
def f32_members(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    path = tmp_path_factory.mktemp("f32") / "minilm.bundle"
    assert run_cli("--atlas", minilm_atlas, "export", "-o", path).returncode == 0
    return read_members(path)


def _edited(members: dict, member: str, column: str, change: object) -> dict:
    table = pq.read_table(io.BytesIO(members[member]))
    values = change(table)  # type: ignore[operator]
    table = table.set_column(table.column_names.index(column), column, values)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return {**members, member: sink.getvalue()}


def _sigma_at(value: float) -> object:
    def change(table: pa.Table) -> pa.Array:
        sigma = table["sigma"].to_numpy().copy()
        sigma[table["direction_id"].to_numpy() == 433] = value
        return pa.array(sigma)

    return change


def _nulls_at(column: str, every: int) -> object:
    def change(table: pa.Table) -> pa.Array:
        values = table[column].combine_chunks()
        holes = np.arange(len(values)) % every == 0
        return pc.if_else(pa.array(holes), pa.nulls(len(values), values.type), values)

    return change


BUNDLE_EDITS = {
    "nan sigma": (DIRECTIONS, "sigma", _sigma_at(float("nan")), "sigma is nan"),
    "null token ids": (
        "models/0000/top_tokens.parquet",
        "token_id",
        _nulls_at("token_id", 7),
        "top_tokens.token_id is NULL",
    ),
    "null heads": (DIRECTIONS, "head", _nulls_at("head", 1), "its head does not fit its kind"),
    "time past 9999": (
        "models/0000/models.parquet",
        "ingested_at",
        lambda t: pa.array([3 * 10**17], t["ingested_at"].type),  # microseconds: year 11476
        "a time in the atlas's data is past the year 9999",
    ),
    "negative sigma": (DIRECTIONS, "sigma", _sigma_at(-1.0), "negative"),
    "layers past the model's": (  # MiniLM has 6 (direction 3840 is the first in layer 5)
        "models/0000/models.parquet",
        "n_layers",
        lambda t: pa.array([5], t["n_layers"].type),
        "outside the model's 5 layers of 12 heads",
    ),
    "a string of a count": (
        "models/0000/models.parquet",
        "n_layers",
        lambda t: pa.array(["6"]),
        "models.n_layers is '6', not a count of at least 1",
    ),
    "layers the directions do not reach": (
        "models/0000/models.parquet",
        "n_layers",
        lambda t: pa.array([100], t["n_layers"].type),
        "models.n_layers is 100, but the directions' layers end at 5",
    ),
    "a top_k past the ranks stored": (
        "models/0000/models.parquet",
        "top_k",
        lambda t: pa.array([2**31 - 1], t["top_k"].type),
        "models.top_k is 2147483647 (of 30522 tokens), but each direction lists 20",
    ),
    "a d_vocab not the unembedding's": (
        "models/0000/models.parquet",
        "d_vocab",
        lambda t: pa.array([30000], t["d_vocab"].type),
        "models.d_vocab is 30000, but the unembedding has 30522 rows",
    ),
    "a negative top_k": (
        "models/0000/models.parquet",
        "top_k",
        lambda t: pa.array([-10], t["top_k"].type),
        "models.top_k is -10, not a count of at least 1",
    ),
    "wrong token scores": (
        "models/0000/top_tokens.parquet",
        "score",
        lambda t: pc.multiply(t["score"], pa.scalar(1.5, pa.float32())),
        "top_tokens score",
    ),
}


@pytest.mark.parametrize("edit", list(BUNDLE_EDITS))
def test_a_bundle_with_bad_values_and_recomputed_checksums_is_refused(
    f32_members: tuple, atlas_copy: Path, tmp_path: Path, edit: str
) -> None:
    member, column, change, words = BUNDLE_EDITS[edit]
    manifest, members = f32_members
    bundle = write_bundle(
        tmp_path / "b.bundle", dict(manifest), _edited(members, member, column, change)
    )
    refused(atlas_copy, bundle, words, "'minilm'")  # one line, the atlas unchanged
    with pytest.raises(atlas.AtlasError, match=re.escape(words)) as caught:
        atlas.open(bundle)
    assert "\n" not in str(caught.value)


# -- Parquet trees --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tree") / "tree"
    assert run_cli("--atlas", minilm_atlas, "export", "--parquet", out).returncode == 0
    return out


def test_a_tree_searches_words_as_the_atlas_does(minilm_atlas: Path, tree: Path) -> None:
    """The tree keeps the unembedding: words are residual queries, with equal results."""
    for args in (
        ["search", "fire", "-k", "10"],
        ["search", "water", "--kind", "ov", "-k", "5"],
        ["trace", "432", "--min-cos", "0.2"],
    ):
        from_tree = run_cli("--atlas", tree, *args, "--format", "json")
        from_atlas = run_cli("--atlas", minilm_atlas, *args, "--format", "json")
        assert from_tree.returncode == 0, from_tree.stderr
        assert "token space" not in from_tree.stderr
        # equal to float rounding: the tree's index is built from the vectors it reads back
        assert _rounded(json.loads(from_tree.stdout)) == _rounded(json.loads(from_atlas.stdout))


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def test_an_old_tree_says_in_its_output_that_words_searched_token_space(
    tree: Path, tmp_path: Path
) -> None:
    old = version_1_tree(tree, tmp_path / "old")
    table = run_cli("--atlas", old, "search", "fire", "-k", "3")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert "space" in header.split() and all(" token " in row for row in rows), table.stdout


def test_check_works_on_a_tree(tree: Path, tmp_path: Path) -> None:
    good = run_cli("--atlas", tree, "check")
    assert good.returncode == 0 and "checked 1 models, 13,824 directions" in good.stdout
    bad = tmp_path / "bad"
    shutil.copytree(tree, bad)
    part = bad / "directions" / "model_id=minilm" / "data_0.parquet"
    table = pq.read_table(part)
    sigma = table["sigma"].to_numpy().copy()
    sigma[433] = -2.0
    pq.write_table(
        table.set_column(table.column_names.index("sigma"), "sigma", pa.array(sigma)), part
    )
    result = run_cli("--atlas", bad, "check")
    assert result.returncode == 1
    assert (
        "minilm  direction 433 (layer 0 head 6 ov" in result.stdout and "negative" in result.stdout
    )
    line = assert_one_error_line(run_cli("--atlas", bad, "search", "fire"))
    assert "'minilm'" in line and "negative" in line, line
    assert assert_one_error_line(run_cli("--atlas", bad, "check", "--repair"))


def test_an_atlas_whose_only_model_is_damaged_is_not_called_empty(atlas_copy: Path) -> None:
    """It said "holds no models yet (svd-atlas ingest MODEL adds one)", and search "holds no
    models yet", as if nothing were there."""
    (_store(atlas_copy) / "model.duckdb").write_bytes(b"junk")
    listed = run_cli("--atlas", atlas_copy, "models")
    assert listed.returncode == 0
    said = f"{atlas_copy} holds no readable models: 'minilm' left out as damaged"
    assert said in listed.stdout and "svd-atlas check names the damage" in listed.stdout
    assert said in assert_one_error_line(run_cli("--atlas", atlas_copy, "search", "fire"))
