"""``records_json``, the server's encoder of the library's records, writes what the walk of
``jsonable`` then ``json.dumps`` writes: plain records in one pass, the rest walked first."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.core.jsondata import jsonable, records_json, result_rows, text_slices

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.builds(np.float32, st.floats(width=32, allow_nan=True))
    | st.builds(np.int64, st.integers(-(2**63), 2**63 - 1))
    | st.just(dt.datetime(2026, 12, 7, 3, 30))
)
RECORDS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def _walked(value: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(RECORDS)
def test_records_json_writes_what_the_walk_writes(value: Any) -> None:
    assert records_json(value) == _walked(value)


def test_a_nan_deep_in_a_record_is_null() -> None:
    record = {"hits": [{"score": 0.5, "sigma": math.nan}, {"score": -math.inf}]}
    assert json.loads(records_json(record)) == {
        "hits": [{"score": 0.5, "sigma": None}, {"score": None}]
    }


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), max_size=40),
    max_bytes=st.integers(400, 4_000),
)
def test_text_slices_cover_the_table_in_order_within_their_bound(
    sizes: list[int], max_bytes: int
) -> None:
    """Every row once, in order; each slice within ``max_bytes`` unless it is one row, and a
    slice ends only where the next row would not fit (none is cut short needlessly)."""
    import pyarrow as pa

    table = pa.table({"v": pa.array([np.arange(n, dtype=np.float32) for n in sizes])})
    parts = list(text_slices(table, max_bytes))
    assert pa.concat_tables(parts).equals(table) if parts else table.num_rows == 0
    for n, part in enumerate(parts):
        assert part.nbytes <= max_bytes or part.num_rows == 1
        if n + 1 < len(parts):  # the next slice's first row did not fit in this one
            grown = table.slice(sum(p.num_rows for p in parts[:n]), part.num_rows + 1)
            assert grown.nbytes > max_bytes


def test_a_row_too_large_for_text_is_one_line(monkeypatch: Any) -> None:
    import pyarrow as pa
    import pytest

    from atlas.core import jsondata
    from atlas.core.errors import AtlasError

    monkeypatch.setattr(jsondata, "MAX_TEXT_ROW_BYTES", 10_000)
    table = pa.table({"v": pa.array([np.zeros(10, np.float32), np.zeros(5_000, np.float32)])})
    with pytest.raises(AtlasError, match="row 2 of the result holds 0 MB, more than a table"):
        list(text_slices(table, 1_000))
    assert [p.num_rows for p in text_slices(table.slice(0, 1), 1_000)] == [1]
    assert result_rows(table.slice(0, 1))[1] == [[[0.0] * 10]]
