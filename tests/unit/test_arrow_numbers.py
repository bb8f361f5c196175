"""Arrow columns to numpy without pyarrow's ``to_numpy`` (which imports pandas), and strings to
Arrow without its conversion of Python objects (which does too), checked against the values as
Python reads them."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from atlas.core.vectors import numbers, string_array, vector_matrix


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
