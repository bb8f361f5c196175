"""Arrow (how DuckDB and Parquet hand results over) as numpy and Python: direction vectors,
numbers and rows, without pyarrow's conversions that import pandas (a quarter to half a
second of a fresh CLI process)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa

from atlas.core.errors import AtlasError


class BadValues(AtlasError, ValueError):
    """Values no atlas writes (a NULL among numbers, a time past the year 9999): only an
    edited store, bundle or tree holds them (``check`` names where)."""


def numbers(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric column without nulls as numpy, read from its data buffer.

    pyarrow's own ``to_numpy`` imports pandas for an array that carries a validity bitmap
    (as DuckDB's results do): half a second of a fresh CLI process, on the search path.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise BadValues("a NULL where a number must be (the atlas's data was changed)")
    data = column.buffers()[1]
    if pa.types.is_boolean(column.type):  # one bit a value, from the array's offset on
        if data is None:
            return np.zeros(0, bool)
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return bits[column.offset : column.offset + len(column)].astype(bool)
    dtype = _NUMPY[column.type.id]
    if data is None:
        return np.zeros(0, dtype)
    return np.frombuffer(data, dtype, count=len(column), offset=column.offset * dtype.itemsize)


_NUMPY = {
    t.id: np.dtype(d)
    for t, d in (
        (pa.int8(), np.int8),
        (pa.int16(), np.int16),
        (pa.int32(), np.int32),
        (pa.int64(), np.int64),
        (pa.uint8(), np.uint8),
        (pa.uint16(), np.uint16),
        (pa.uint32(), np.uint32),
        (pa.uint64(), np.uint64),
        (pa.float16(), np.float16),
        (pa.float32(), np.float32),
        (pa.float64(), np.float64),
    )
}


def vector_matrix(column: pa.Array | pa.ChunkedArray, dtype: type = np.float32) -> np.ndarray:
    """``[rows, width]`` from a list or fixed-size-list column of equal-length float vectors."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = numbers(column.flatten())
    rows = len(column)
    return np.asarray(flat, dtype).reshape(rows, flat.size // rows if rows else 0)


def vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A fixed-size-list column (``FLOAT[d]`` in DuckDB) over the rows of ``vectors`` (no copy)."""
    vectors = np.ascontiguousarray(vectors)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])


def string_array(values: list[str]) -> pa.StringArray:
    """An Arrow string array of ``values``, built from its buffers: pyarrow's own conversion of
    Python objects imports pandas (half a second of a fresh CLI process) to check for its
    types."""
    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    offsets[1:] = np.cumsum([len(e) for e in encoded])
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers)


def python_rows(table: pa.Table) -> list[dict[str, Any]]:
    """``table.to_pylist()``, but a column of timestamps with a time zone (``models.ingested_at``)
    is converted as UTC wall times to the microsecond, then given the UTC zone: the same
    instants, and pyarrow's own conversion of zoned (or nanosecond) timestamps imports pandas.
    A time past what Python holds (the year 9999) is :class:`BadValues`."""
    zoned = []
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz:
            zoned.append(field.name)
            column = table.column(i).cast(pa.timestamp("us"), safe=False)
            table = table.set_column(i, field.name, column)
    try:
        rows = table.to_pylist()
    except OverflowError:
        raise BadValues(
            "a time in the atlas's data is past the year 9999 (it was changed)"
        ) from None
    for row in rows:
        for name in zoned:
            if row[name] is not None:
                row[name] = row[name].replace(tzinfo=dt.UTC)
    return rows
