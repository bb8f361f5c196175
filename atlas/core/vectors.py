"""Direction vectors between Arrow (how DuckDB and Parquet hand them over) and numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def vector_matrix(column: pa.Array | pa.ChunkedArray, dtype: type = np.float32) -> np.ndarray:
    """``[rows, width]`` from a list or fixed-size-list column of equal-length float vectors."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    rows = len(column)
    return np.asarray(flat, dtype).reshape(rows, flat.size // rows if rows else 0)


def vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A fixed-size-list column (``FLOAT[d]`` in DuckDB) over the rows of ``vectors`` (no copy)."""
    vectors = np.ascontiguousarray(vectors)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
