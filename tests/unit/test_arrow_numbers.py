"""Arrow columns to numpy without pyarrow's ``to_numpy`` (which imports pandas), and strings to
Arrow without its conversion of Python objects (which does too), checked against the values as
Python reads them."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from atlas.core.vectors import numbers, python_rows, string_array, vector_matrix


@pytest.mark.parametrize("sql_type", ["TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UBIGINT",
                                      "FLOAT", "DOUBLE"])  # fmt: skip
def test_numbers_of_duckdb_columns_equal_their_values(sql_type: str) -> None:
    table = duckdb.sql(
        f"SELECT (i * 3 % 101)::{sql_type} AS x FROM range(5000) t(i)"
    ).to_arrow_table()
    got = numbers(table["x"])
    assert got.tolist() == table["x"].to_pylist()
    sliced = table["x"].combine_chunks().slice(17, 40)  # an offset into the buffer
    assert numbers(sliced).tolist() == sliced.to_pylist()


def test_vectors_of_a_sliced_fixed_size_list_column() -> None:
    rows = np.arange(60, dtype=np.float32).reshape(12, 5)
    column = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), 5).slice(3, 4)
    np.testing.assert_array_equal(vector_matrix(column), rows[3:7])


def test_a_column_with_nulls_is_refused() -> None:
    with pytest.raises(ValueError):
        numbers(pa.array([1, None, 3]))


@pytest.mark.parametrize(
    "values", [[], [""], ["fire", "", "über", "##fire", "火", "a\x00b"], ["x" * 70_000, "y"]]
)
def test_string_arrays_hold_their_values(values: list[str]) -> None:
    array = string_array(values)
    array.validate(full=True)
    assert array.type == pa.string() and array.to_pylist() == values


def test_numbers_of_a_boolean_column_at_any_offset() -> None:
    table = duckdb.sql("SELECT (i * 7 % 3 = 0) AS b FROM range(300) t(i)").to_arrow_table()
    column = table["b"].combine_chunks()
    for start, length in ((0, 300), (1, 0), (3, 1), (5, 17), (8, 64), (13, 250)):
        part = column.slice(start, length)
        assert numbers(part).dtype == bool and numbers(part).tolist() == part.to_pylist()


def test_python_rows_give_zoned_timestamps_as_the_same_instants() -> None:
    table = duckdb.sql(
        "SELECT i, CASE WHEN i = 2 THEN NULL ELSE TIMESTAMPTZ '2026-12-07 16:30:00+05:30' "
        "+ i * INTERVAL 1 HOUR END AS t FROM range(4) r(i)"
    ).to_arrow_table()
    got = python_rows(table)
    assert got == table.to_pylist()  # equal instants, whatever zone each datetime carries
    assert all(r["t"] is None or r["t"].utcoffset() is not None for r in got)
    assert [r["i"] for r in got] == [0, 1, 2, 3] and got[2]["t"] is None


def test_python_rows_give_nanosecond_zoned_timestamps_as_datetimes() -> None:
    """Nanoseconds to the microsecond (a Python datetime holds no more), the instant kept."""
    import datetime as dt

    nanos = 1_765_000_000_123_456_789
    table = pa.table({"t": pa.array([nanos, None], pa.timestamp("ns", tz="Asia/Tokyo"))})
    (first, second) = python_rows(table)
    assert isinstance(first["t"], dt.datetime) and second["t"] is None
    assert first["t"] == dt.datetime.fromtimestamp(nanos // 1000 / 1e6, dt.UTC)
    assert first["t"].microsecond == 123_456
