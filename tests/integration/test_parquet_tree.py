"""The Parquet tree export, read back by plain DuckDB and pyarrow, and opened by svd-atlas."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import atlas
from tests.support.atlas_compare import assert_tables_equal, neighbours, query_set
from tests.support.helpers import assert_one_error_line, run_cli
from tests.support.old_formats import version_1_tree

READER = r"""
import json, sys
import duckdb, pyarrow.dataset as ds, pyarrow.parquet as pq
root = sys.argv[1]
con = duckdb.connect()
def scan(table):
    return (f"read_parquet('{root}/{table}/*/*.parquet', hive_partitioning = true, "
            "hive_types = {'model_id': VARCHAR})")
out = {"duckdb": {}, "pyarrow": {}}
for table in ("models", "matrices", "directions", "top_tokens", "top_neurons"):
    out["duckdb"][table] = con.sql(
        f"SELECT model_id, count(*) FROM {scan(table)} GROUP BY ALL ORDER BY ALL").fetchall()
    t = ds.dataset(f"{root}/{table}", format="parquet", partitioning="hive").to_table()
    out["pyarrow"][table] = sorted(
        (str(k), v) for k, v in zip(*t.group_by("model_id").aggregate([("model_id", "count")])
                                    .to_pydict().values()))
probe = con.sql(f"SELECT direction_id, vector FROM {scan('directions')} "
                "WHERE direction_id IN (0, 4321) ORDER BY direction_id").fetchall()
out["vectors"] = {str(i): v for i, v in probe}
t = pq.read_table(f"{root}/top_tokens", partitioning="hive",
                  filters=[("direction_id", "=", 4321), ("polarity", "=", "pos")])
out["tokens"] = t.sort_by("rank")["token"].to_pylist()
out["svd_atlas_imported"] = sorted(
    m for m in sys.modules if m.split(".")[0] in ("atlas", "ingest", "query"))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tree(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parquet") / "tree"
    result = run_cli("--atlas", minilm_atlas, "export", "--parquet", out)
    assert result.returncode == 0, result.stderr
    return out


def test_read_by_plain_duckdb_and_pyarrow(minilm_atlas: Path, tree: Path) -> None:
    assert sorted(p.name for p in tree.iterdir()) == [
        "_svd_atlas.json", "coherence_null", "composition", "composition_pairs", "directions",
        "matrices", "models", "token_bags", "top_neurons", "top_tokens", "unembed", "vocab",
    ]  # fmt: skip
    assert [p.name for p in (tree / "directions").iterdir()] == ["model_id=minilm"]
    result = subprocess.run(
        [sys.executable, "-c", READER, str(tree)], capture_output=True, text=True, cwd=tree
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["svd_atlas_imported"] == []
    with atlas.open(minilm_atlas) as a:
        for name in ("models", "matrices", "directions"):
            n = a.sql(f"SELECT count(*) AS n FROM {name}")["n"][0].as_py()
            assert got["duckdb"][name] == [["minilm", n]] and got["pyarrow"][name] == [
                ["minilm", n]
            ]
        for name in ("top_tokens", "top_neurons"):
            n = a.sql(f"SELECT count(*) AS n FROM {name}")["n"][0].as_py()
            assert got["duckdb"][name] == [["minilm", n]] and got["pyarrow"][name] == [
                ["minilm", n]
            ]
        expected = a.sql(
            "SELECT direction_id, vector FROM directions WHERE direction_id IN (0, 4321) "
            "ORDER BY direction_id"
        ).to_pylist()
        for row in expected:
            np.testing.assert_array_equal(got["vectors"][str(row["direction_id"])], row["vector"])
        tokens = a.sql(
            "SELECT token FROM top_tokens WHERE direction_id = 4321 AND polarity = 'pos' "
            "ORDER BY rank"
        )["token"].to_pylist()
        assert got["tokens"] == tokens and len(tokens) == 20


def test_open_tree_as_atlas(minilm_atlas: Path, tree: Path) -> None:
    with atlas.open(minilm_atlas) as original, atlas.open(tree) as opened:
        assert opened.model_ids() == ["minilm"]
        assert_tables_equal(original, opened)
        queries = query_set(original, "minilm", n=50)
        np.testing.assert_array_equal(
            neighbours(opened, "minilm", queries), neighbours(original, "minilm", queries)
        )
        assert opened.models()[0]["size_bytes"] > 10e6
    listing = run_cli("--atlas", tree, "models")
    assert listing.returncode == 0 and listing.stdout.splitlines()[1].startswith("minilm ")


def test_tree_refuses_a_folder_that_is_not_a_tree_and_f16(minilm_atlas: Path, tree: Path) -> None:
    stranger = tree.parent / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    line = assert_one_error_line(run_cli("--atlas", minilm_atlas, "export", "--parquet", stranger))
    assert "neither empty nor an svd-atlas Parquet tree" in line
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]
    other = tree.parent / "other"
    line = assert_one_error_line(
        run_cli("--atlas", minilm_atlas, "export", "--parquet", other, "--vectors", "f16")
    )
    assert "f32" in line and not other.exists()


def test_a_link_out_of_the_tree_is_not_followed(tree: Path, tmp_path: Path) -> None:
    """The session reads inside the tree only: a data file replaced by a link to a file
    elsewhere is refused; a link to another file of the tree is read."""
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    vocab = next(copy.glob("vocab/*/data_0.parquet"))
    outside = tmp_path / "outside.parquet"
    vocab.rename(outside)
    vocab.symlink_to(outside)
    for args in (["sql", "SELECT count(*) AS n FROM vocab"], ["check"]):
        line = assert_one_error_line(run_cli("--atlas", copy, *args))
        assert f"{vocab.relative_to(copy)}: a link to a file outside the atlas" in line, line
    unembed = next(copy.glob("unembed/*/unembed.npy"))  # read by Python, not DuckDB
    unembed.rename(tmp_path / "unembed.npy")
    unembed.symlink_to(tmp_path / "unembed.npy")
    vocab.unlink()
    outside.rename(vocab)
    line = assert_one_error_line(run_cli("--atlas", copy, "search", "fire"))
    assert f"{unembed.relative_to(copy)}: a link to a file outside the atlas" in line, line
    unembed.unlink()
    (tmp_path / "unembed.npy").rename(unembed)
    outside = tmp_path / "outside.parquet"
    vocab.rename(outside)
    vocab.symlink_to(outside)
    inside = copy / "kept.parquet"
    outside.rename(inside)
    vocab.unlink()
    vocab.symlink_to(inside)
    counted = run_cli("--atlas", copy, "sql", "SELECT count(*) AS n FROM vocab", "--format", "csv")
    rows = pq.read_metadata(inside).num_rows
    assert counted.returncode == 0 and counted.stdout.split()[1] == str(rows)


def test_a_tree_in_a_folder_named_like_a_pattern_is_that_folder(tree: Path, tmp_path: Path) -> None:
    """DuckDB globs every file it reads: the tree's own folder name is taken literally (a tree
    at ``b*`` matched its neighbour ``bz`` too, one at ``c[2]`` nothing)."""
    for name in ("c[2]", "b*"):
        shutil.copytree(tree, tmp_path / name)
    shutil.copytree(tree, tmp_path / "bz")
    for name in ("c[2]", "b*"):
        shown = run_cli("--atlas", tmp_path / name, "sql", "SELECT count(*) AS n FROM models",
                        "--format", "csv")  # fmt: skip
        assert shown.returncode == 0 and shown.stdout.split() == ["n", "1"], shown.stderr


@pytest.mark.slow  # two atlases ingested for it
def test_ids_shared_by_models_from_two_atlases_are_refused_not_guessed(
    minilm_atlas: Path, tmp_path: Path
) -> None:
    """Two atlases each number their first model from 0: in one tree, `show 5` could be
    either model's direction 5, so it is refused; SQL by (model_id, direction_id) still works."""
    from tests.support.tiny_models import ingest_loaded, tiny_gpt2

    other = tmp_path / "other"
    ingest_loaded(other, tiny_gpt2(), "tiny")
    tree = tmp_path / "tree"
    exported = [run_cli("--atlas", root, "export", "--parquet", tree)
                for root in (minilm_atlas, other)]  # fmt: skip
    assert all(e.returncode == 0 for e in exported), [e.stderr for e in exported]
    # the second export says what it made of the tree
    assert "overlap" not in exported[0].stderr
    assert (
        f"note: the direction ids of 'tiny' (0..{tiny_last(other)}) overlap those of 'minilm' in "
        f"{tree}: ids are unique only within one atlas" in exported[1].stderr
    ), exported[1].stderr
    for command in (["show", "5"], ["trace", "5"], ["search", "--direction", "5"]):
        line = assert_one_error_line(run_cli("--atlas", tree, *command))
        assert "direction 5 is ambiguous" in line and "minilm, tiny" in line, line
        assert "load their bundles into one atlas" in line, line
    with atlas.open(tree) as opened, atlas.open(other) as tiny:
        rows = opened.sql(
            "SELECT sigma FROM directions WHERE model_id = 'tiny' AND direction_id = 5"
        ).to_pylist()
        assert rows == tiny.sql("SELECT sigma FROM directions WHERE direction_id = 5").to_pylist()
        # words need no id lookup: each hit is described from the model it was found in
        with atlas.open(minilm_atlas) as alone:
            for model in ("minilm", "tiny"):
                source = alone if model == "minilm" else tiny
                got = [(h.direction_id, h.score, h.tokens)
                       for h in opened.search("fire", model=model, k=5)]  # fmt: skip
                want = [(h.direction_id, h.score, h.tokens)
                        for h in source.search("fire", k=5)]  # fmt: skip
                assert [g[0] for g in got] == [w[0] for w in want]
                assert [g[2] for g in got] == [w[2] for w in want]
                np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)
            both = opened.search("fire", k=20)
            assert {h.model_id for h in both} == {"minilm", "tiny"}


def tiny_last(root: Path) -> int:
    with atlas.open(root) as a:
        return int(a.sql("SELECT max(direction_id) FROM directions").column(0)[0].as_py())


def test_words_without_an_unembedding_are_searched_in_token_space_with_a_note(
    tree: Path, tmp_path: Path
) -> None:
    """A tree exported before trees kept the unembedding (format version 1)."""
    old = version_1_tree(tree, tmp_path / "old")
    result = run_cli("--atlas", old, "search", "fire", "-k", "3", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "note: minilm has no unembedding here: words are searched in token space" in (
        result.stderr
    )
    assert {hit["space"] for hit in json.loads(result.stdout)} == {"token"}


# a NULL in direction 5's row: (column, its value, what check says)
NULLS = {
    "id": ("direction_id", "NULL", "directions.direction_id values are not unique"),
    "vector value": ("vector", "list_concat(vector[:3], [NULL])", "its vector holds NULL values"),
    "vector": ("vector", "NULL", "its vector is NULL, other directions have theirs"),
}


@pytest.mark.parametrize(
    "case", ["id", *(pytest.param(c, marks=pytest.mark.slow) for c in NULLS if c != "id")]
)  # slow: the fast tier refuses a NULL id
def test_a_null_id_or_vector_is_refused_in_one_line(tree: Path, tmp_path: Path, case: str) -> None:
    """A tree is untrusted: a NULL where a search reads numbers is named, not read as a number
    (a NULL id was a NaN cast to an id, with a warning), and check finds it."""
    import duckdb

    column, null, found = NULLS[case]
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    (data,) = copy.glob("directions/*/data_*.parquet")
    duckdb.sql(
        f"COPY (SELECT * REPLACE (CASE WHEN direction_id = 5 THEN {null} ELSE {column} END "
        f"AS {column}) FROM read_parquet('{data}')) TO '{tmp_path / 'x.parquet'}'"
    )
    (tmp_path / "x.parquet").rename(data)
    readers = [["search", "fire"], ["trace", "5"]] + ([["show", "5"]] if case == "id" else [])
    for args in readers:  # a card reads no vector
        line = assert_one_error_line(run_cli("--atlas", copy, *args))
        assert "model 'minilm'" in line and "NULL" in line, line
    # found when the tree is opened, or (a vector's value, when a sample of them missed it)
    # when its vectors are read
    said = ("a row of directions has no direction_id (NULL)", "its vector holds NULL values",
            "its directions hold a NULL id or vector value")  # fmt: skip
    assert any(m in line for m in said), line
    report = run_cli("--atlas", copy, "check")
    assert report.returncode == 1 and found in report.stdout, report.stdout
