"""Hit rows (``atlas.core.hit_rows``): each store's file holds, for every direction, what SQL
over ``directions`` and ``top_tokens`` says; describing hits through it equals describing them
through SQL (a Parquet tree's reader, which has no such file); a damaged file is one line, and
``check --repair`` writes it again."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

import atlas
from atlas.core.exchange.parquet_reader import ParquetReader
from atlas.core.exchange.sources import open_reader
from atlas.core.hit_rows import HIT_FILES, HIT_ROWS, HIT_TOKENS
from atlas.core.reader import Reader, StoreReader
from atlas.core.store import sha256_file
from query.search import describe
from tests.support.helpers import assert_one_error_line, run_cli

# Every direction's hit row by SQL alone: its columns, and its unembed tokens by rank.
ORACLE = """
SELECT d.direction_id, d.layer, d.head, d.kind, d.side, d.sv_index, d.sigma, d.degenerate,
    {lists}
FROM directions d LEFT JOIN top_tokens t
    ON t.direction_id = d.direction_id AND t.basis = 'unembed'
GROUP BY ALL ORDER BY d.direction_id
"""
LISTS = ", ".join(
    f"list(t.{column} ORDER BY t.rank) FILTER (WHERE t.polarity = '{polarity}') "
    f"AS {polarity}_{name}"
    for polarity in ("pos", "neg")
    for column, name in (("token_display", "tokens"), ("score", "scores"))
)


def _oracle(store: Path) -> list[dict[str, Any]]:
    con = duckdb.connect(str(store / "model.duckdb"), read_only=True)
    try:
        rows = con.sql(ORACLE.format(lists=LISTS)).to_arrow_table().to_pylist()
    finally:
        con.close()
    lists = ("pos_tokens", "pos_scores", "neg_tokens", "neg_scores")
    return [{k: (v or []) if k in lists else v for k, v in r.items()} for r in rows]


@pytest.fixture(scope="module")
def store_reader(small_atlas: Path) -> Iterator[StoreReader]:
    reader = StoreReader(small_atlas)
    yield reader
    reader.close()


def test_every_direction_s_hit_row_is_what_sql_says(store_reader: StoreReader) -> None:
    for model_id in store_reader.model_ids():
        store = store_reader.store_path(model_id)
        expected = _oracle(store)
        ids = [r["direction_id"] for r in expected]
        held = store_reader.hit_rows(model_id, ids)
        assert [asdict(held[i]) for i in ids] == expected, model_id
        assert any(r["head"] is None for r in expected)  # MLP directions: no head
        members = json.loads((store / "manifest.json").read_text())["members"]
        for name in HIT_FILES:  # listed like every file of the store
            path = store / name
            assert members[name] == {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def test_describing_through_the_file_equals_describing_through_sql(
    small_atlas: Path, store_reader: StoreReader, tmp_path: Path
) -> None:
    with atlas.open(small_atlas) as a:
        a.export_parquet(tmp_path / "tree")
    tree = open_reader(str(tmp_path / "tree"))
    try:
        assert isinstance(tree, ParquetReader) and type(tree).hit_rows is Reader.hit_rows
        rng = np.random.default_rng(0)
        ids = [int(i) for i in store_reader.sql("SELECT direction_id FROM directions")[0]]
        picked = rng.choice(ids, 60, replace=False).tolist()
        scored = [
            (float(s), i, store_reader.model_of(i))
            for s, i in zip(rng.uniform(-1, 1, 60), picked, strict=True)
        ]
        through_file = describe(store_reader, scored, "residual")
        assert [h.to_dict() for h in through_file] == [
            h.to_dict() for h in describe(tree, scored, "residual")
        ]
        assert {h.sign for h in through_file} == {-1, 1}
    finally:
        tree.close()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _shift(path: Path) -> None:
    """Every row claims the next direction's id: the size is right, the rows are not."""
    rows = np.load(path, mmap_mode="r+")
    rows["direction_id"] += 1
    rows.flush()


def _nest_tokens(path: Path) -> None:
    """Its vocabulary, the same size, nested too deeply for Python's JSON decoder."""
    tokens = path.with_name(HIT_TOKENS)
    size = tokens.stat().st_size
    tokens.write_text("[" * (size // 2) + "]" * (size - size // 2))


@pytest.mark.parametrize(
    "damage",
    [_truncate, pytest.param(_shift, marks=pytest.mark.slow),  # slow: a second repair
     pytest.param(_nest_tokens, marks=pytest.mark.slow)],
    ids=["truncated", "shifted", "nested"],
)  # fmt: skip
def test_a_damaged_file_is_one_line_and_check_repair_writes_it_again(
    small_copy: Path, damage: Any
) -> None:
    with atlas.open(small_copy) as a:
        model_id = a.reader.model_ids()[0]
        store = a.reader.store_path(model_id)
    before = {name: (store / name).read_bytes() for name in HIT_FILES}
    found = run_cli("--atlas", small_copy, "search", "fire", "--model", model_id)
    assert found.returncode == 0, found.stderr
    damage(store / HIT_ROWS)

    with atlas.open(small_copy) as a:  # what a server's health says before any search
        assert list(a.damaged_indexes()) == [model_id], a.damaged_indexes()
    line = assert_one_error_line(run_cli("--atlas", small_copy, "search", "fire", "--model",
                                         model_id))  # fmt: skip
    assert f"model '{model_id}': its hit rows" in line, line
    assert "(svd-atlas check --repair) writes them again" in line, line
    checked = run_cli("--atlas", small_copy, "check")
    assert checked.returncode == 1 and HIT_ROWS in checked.stdout, checked.stdout
    repaired = run_cli("--atlas", small_copy, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert f"{HIT_ROWS} written again from DuckDB" in repaired.stdout
    assert {name: (store / name).read_bytes() for name in HIT_FILES} == before
    again = run_cli("--atlas", small_copy, "search", "fire", "--model", model_id)
    assert again.returncode == 0 and again.stdout == found.stdout


@pytest.mark.slow  # the fast tier repairs a truncated file (above)
def test_a_missing_file_is_found_by_check_and_written_again(small_copy: Path) -> None:
    with atlas.open(small_copy) as a:
        store = a.reader.store_path(a.reader.model_ids()[-1])
    shutil.move(store / HIT_ROWS, store.parent / "elsewhere.npy")
    checked = run_cli("--atlas", small_copy, "check")
    assert checked.returncode == 1 and f"{HIT_ROWS} is missing" in checked.stdout
    assert run_cli("--atlas", small_copy, "check", "--repair").returncode == 0
    assert (store / HIT_ROWS).read_bytes() == (store.parent / "elsewhere.npy").read_bytes()
    (store.parent / "elsewhere.npy").unlink()
    assert run_cli("--atlas", small_copy, "check").returncode == 0


def test_the_file_holds_what_the_tables_hold_even_a_bad_value(small_copy: Path) -> None:
    """A NaN sigma (damage only a re-ingest fixes, and check says so) is written as the tables
    hold it, and then agrees with them: a repair does not find it again and again."""
    with atlas.open(small_copy) as a:
        store = a.reader.store_path(a.reader.model_ids()[0])
    con = duckdb.connect(str(store / "model.duckdb"))
    (first,) = con.sql("SELECT min(direction_id) FROM directions").fetchall()[0]
    con.execute("UPDATE directions SET sigma = 'nan'::DOUBLE WHERE direction_id = ?", [first])
    con.execute("CHECKPOINT")
    con.close()
    repaired = run_cli("--atlas", small_copy, "check", "--repair")
    assert f"{HIT_ROWS} written again from DuckDB" in repaired.stdout, repaired.stdout
    left = [line for line in repaired.stdout.splitlines() if line.startswith("error")]
    assert left and not any(HIT_ROWS in line for line in left), repaired.stdout
    assert np.isnan(np.load(store / HIT_ROWS)["sigma"][0])
