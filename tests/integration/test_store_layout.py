"""A store keeps a direction's rows together, in direction id order and in small row groups,
so that describing a few hits reads a few row ranges (``atlas.core.store.TableWriter``); and
hits described through that path say what the whole-table view says."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np

import atlas
from atlas.core.layout import MODEL_DB
from atlas.core.store import CLUSTER_ORDER, row_group_rows
from query.search import describe


def _stores(root: Path) -> list[Path]:
    return sorted(p for p in (root / "store").iterdir() if p.is_dir())


def test_row_groups_grow_with_a_table_so_that_lookups_stay_short() -> None:
    """Small tables keep the smallest groups; a table of 1e6 directions' top tokens (33 M
    rows) gets about 2,048 groups instead of 16,000 zone maps to walk per lookup."""
    assert row_group_rows(0) == row_group_rows(3_300_000) == 2048
    assert row_group_rows(1_000_000) == 2048  # 1e6 directions' vectors: small reads by id
    assert row_group_rows(33_331_200) == 16384
    assert row_group_rows(10**10) == 65536


def test_tables_are_stored_in_direction_order_in_small_row_groups(small_atlas: Path) -> None:
    for store in _stores(small_atlas):
        assert not [p.name for p in store.iterdir() if p.suffix in (".tmp", ".wal")]
        con = duckdb.connect(str(store / MODEL_DB), read_only=True)
        try:
            for table, order in CLUSTER_ORDER.items():
                columns = [c.strip() for c in order.split(",")]
                stored = con.sql(f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid")
                rows = stored.fetchall()
                assert rows, table
                assert rows == sorted(rows), f"{store.name}: {table} is not in {order} order"
            for table in ("directions", "top_tokens"):
                n_rows = con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]
                groups = con.sql(
                    f"SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('{table}')"
                ).fetchall()[0][0]
                assert groups == math.ceil(n_rows / row_group_rows(n_rows)), table
        finally:
            con.close()


def test_described_hits_match_the_direction_tokens_view(small_atlas: Path) -> None:
    with atlas.open(small_atlas) as a:
        reader = a.reader
        ids = a.sql("SELECT direction_id FROM directions ORDER BY direction_id")["direction_id"]
        every = ids.to_numpy()
        picks = np.random.default_rng(0).choice(every, 25, replace=False)
        scored = [(0.5 if i % 2 else -0.5, int(d), reader.model_of(int(d)))
                  for i, d in enumerate(picks)]  # fmt: skip
        hits = describe(reader, scored, "residual")
        view = {
            r["direction_id"]: r
            for r in a.sql(
                "SELECT * FROM direction_tokens WHERE direction_id IN (SELECT unnest(?))",
                [picks.tolist()],
            ).to_pylist()
        }
    assert [h.direction_id for h in hits] == [int(d) for d in picks]
    for hit, (score, _, _) in zip(hits, scored, strict=True):
        row = view[hit.direction_id]
        pos, neg = row["pos_tokens"], row["neg_tokens"]
        assert (hit.layer, hit.head, hit.kind, hit.side) == (
            row["layer"],
            row["head"],
            row["kind"],
            row["side"],
        )
        assert (hit.sv_index, hit.sigma, hit.model_id) == (
            row["sv_index"],
            row["sigma"],
            row["model_id"],
        )
        assert hit.tokens == (pos if score > 0 else neg)
        assert hit.opposite_tokens == (neg if score > 0 else pos)
