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

from atlas.core.jsondata import jsonable, records_json

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
