"""A store's token-space bags are built within the writer's memory limit, however many
directions it holds: DuckDB runs the query out of core (a window over every direction's tokens
did not, and an ingest of 1e6 directions failed at its last step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from atlas.core.store import TableWriter

# slow: writes token bags under a small memory limit
pytestmark = pytest.mark.slow

DIRECTIONS, TOP, VOCAB = 80_000, 40, 50_257


def test_token_bags_of_many_directions_fit_a_small_memory_limit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = TableWriter(tmp_path, d_model=8, memory_limit="48MB", threads=1)
    norms = [f"tok{i % 40_000}" for i in range(VOCAB)]
    writer.append({"vocab": pa.table({
        "model_id": ["m"] * VOCAB, "token_id": np.arange(VOCAB, dtype=np.int32),
        "token": norms, "token_display": norms, "token_norm": norms,
    })})  # fmt: skip
    rows = DIRECTIONS * TOP
    direction = np.repeat(np.arange(DIRECTIONS, dtype=np.int64), TOP)
    token = rng.integers(0, VOCAB, rows).astype(np.int32)
    score = rng.standard_normal(rows).astype(np.float32)
    writer.append({"top_tokens": pa.table({
        "direction_id": direction, "polarity": np.where(np.arange(rows) % TOP < 20, "pos", "neg"),
        "rank": (np.arange(rows) % 20).astype(np.int16), "token_id": token,
        "token": [""] * rows, "token_display": [""] * rows, "score": score,
        "basis": ["unembed"] * rows,
    })})  # fmt: skip
    writer.finish()

    import duckdb

    con = duckdb.connect(str(tmp_path / "model.duckdb"), read_only=True)
    for d in (0, 12_345, DIRECTIONS - 1):  # the oracle: numpy on the same rows
        rows_d = slice(d * TOP, (d + 1) * TOP)
        sums: dict[str, float] = {}
        for t, s in zip(token[rows_d], score[rows_d], strict=True):
            sums[norms[t]] = sums.get(norms[t], 0.0) + float(s)
        norm = np.sqrt(sum(w * w for w in sums.values()))
        got = dict(con.execute(
            "SELECT token_norm, weight FROM token_bags WHERE direction_id = ?", [d]
        ).fetchall())  # fmt: skip
        assert got.keys() == sums.keys()
        np.testing.assert_allclose([got[k] for k in sums], [sums[k] / norm for k in sums],
                                   rtol=1e-5)  # fmt: skip
    (count,) = con.execute("SELECT count(DISTINCT direction_id) FROM token_bags").fetchone()
    assert count == DIRECTIONS
