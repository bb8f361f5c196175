"""Query results as strict JSON data, CSV cells and printable text, the same for the CLI and
the server.

Text from a user or a vocabulary is shown with its control characters escaped (``\\x1b``), so
that a terminal escape sequence in a token or a model id is seen, never obeyed; JSON keeps them
as JSON escapes, which decode to the original text.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterator
from typing import Any

from atlas.core.errors import AtlasError


def load_json(text: str | bytes) -> Any:
    """``json.loads`` for files svd-atlas reads (catalogs, manifests, bundles): every malformed
    document is a ``ValueError``, one nested too deeply to decode (``[[[[...``, which Python's
    decoder meets with a ``RecursionError``) included."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("its JSON is nested too deeply to read") from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # tabs and newlines too: one cell, one line
_CONTROL_NOT_SPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # CSV quotes the rest


def printable(text: str, keep_spaces: bool = False) -> str:
    """``text`` with control characters (escape sequences, bells, NULs) shown as ``\\xNN``;
    tabs and line breaks too, unless ``keep_spaces`` (a CSV cell, which quotes them)."""
    pattern = _CONTROL_NOT_SPACE if keep_spaces else _CONTROL
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


MAX_LIST_CELL = 24  # longer lists (vectors, spectra) are abbreviated in a table cell


def table_cell(value: Any) -> str:
    """A value as a table shows it to a person: floats to 4 digits, lists joined (long ones
    abbreviated), text printable."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST_CELL:
            shown = ", ".join(table_cell(v) for v in value[:3])
            return f"[{shown}, ... ({len(value)} values)]"
        return ", ".join(table_cell(v) for v in value)
    if isinstance(value, dict):
        return printable(json.dumps(jsonable(value), ensure_ascii=False))
    return printable(str(value))


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON data: NaN and infinities become null, times and intervals
    ISO 8601 strings, bytes hex, anything else its string."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "months") and hasattr(value, "nanoseconds"):  # Arrow's MonthDayNano
        return _iso_duration(value.months, value.days, value.nanoseconds)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _iso_duration(0, value.days, value.seconds * 10**9 + value.microseconds * 1000)
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


def records_json(value: Any) -> str:
    """The library's own records (hits, steps, cards, models) as strict JSON text, the same as
    ``json.dumps(jsonable(value))``: records of plain values are encoded in one pass of the C
    encoder, and only those holding something else (a NaN, a time, a numpy integer) are walked
    by :func:`jsonable` first: a ten-hit search response in 0.16 ms instead of 0.41.
    Not for SQL results: an Arrow interval is a tuple, which the encoder would write as a list.
    """
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # not plain JSON data, or a NaN or infinity
        return json.dumps(jsonable(value), ensure_ascii=False, allow_nan=False)


def _iso_duration(months: int, days: int, nanoseconds: int) -> str:
    """An ISO 8601 duration such as ``P1M2DT3H0.5S`` (each part keeps its own sign, as DuckDB
    intervals do; ``PT0S`` for zero)."""
    date = (f"{months}M" if months else "") + (f"{days}D" if days else "")
    sign = "-" if nanoseconds < 0 else ""
    hours, rest = divmod(abs(nanoseconds), 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = f"{rest / 1e9:.9f}".rstrip("0").rstrip(".")
    time = (f"{sign}{hours}H" if hours else "") + (f"{sign}{minutes}M" if minutes else "")
    time += f"{sign}{seconds}S" if rest else ""
    if not date and not time:
        return "PT0S"
    return f"P{date}" + (f"T{time}" if time else "")


def dumps(value: Any) -> str:
    """Strict, readable JSON (see :func:`jsonable`)."""
    return json.dumps(jsonable(value), ensure_ascii=False, indent=1, allow_nan=False)


def csv_cell(value: Any) -> Any:
    """A CSV cell: lists and objects as JSON text, NaN and infinities empty, text printable
    (its tabs and line breaks kept: the CSV writer quotes them)."""
    if isinstance(value, list | tuple | dict):
        return printable(json.dumps(jsonable(value), ensure_ascii=False))
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return printable(value, keep_spaces=True) if isinstance(value, str) else value


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique, as a table of records needs them: ``a, a`` -> ``a, a_2``."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


# Python values take up to about ten times a result's Arrow bytes (a float is 24 bytes, not 4):
# text output converts at most TEXT_SLICE_BYTES of rows at a time, and refuses a row larger than
# MAX_TEXT_ROW_BYTES (one ``list(vector)`` over a cross join is gigabytes in one cell)
TEXT_SLICE_BYTES = 16 << 20
MAX_TEXT_ROW_BYTES = 64 << 20


def text_slices(table: Any, max_bytes: int = TEXT_SLICE_BYTES) -> Iterator[Any]:
    """``table`` in consecutive slices of at most ``max_bytes`` of Arrow data each (a larger
    row alone, up to ``MAX_TEXT_ROW_BYTES``; beyond it, one :class:`AtlasError`)."""
    if table.nbytes <= max_bytes:  # the usual batch: one slice, no search
        if table.num_rows:
            yield table
        return
    start, n = 0, table.num_rows
    while start < n:
        fits, step = start, 1  # the longest run of rows from ``start`` within ``max_bytes``
        while fits < n and table.slice(start, fits + step - start).nbytes <= max_bytes:
            fits = min(n, fits + step)
            step *= 2
        while step > 1:
            step //= 2
            if fits + step <= n and table.slice(start, fits + step - start).nbytes <= max_bytes:
                fits += step
        if fits == start:  # one row larger than a slice
            size = table.slice(start, 1).nbytes
            if size > MAX_TEXT_ROW_BYTES:
                raise AtlasError(
                    f"row {start + 1} of the result holds {size / 2**20:,.0f} MB, more than a "
                    f"table, JSON or CSV row may ({MAX_TEXT_ROW_BYTES >> 20} MB): select less "
                    "of it, or write it as Parquet"
                )
            fits = start + 1
        yield table.slice(start, fits - start)
        start = fits


def result_rows(table: Any) -> tuple[list[str], list[list[Any]]]:
    """A result table's unique column names and its rows as lists of Python values, converted
    a bounded slice at a time (:func:`text_slices`). A value Python cannot hold (a date past
    year 9999, DuckDB's infinite dates) is Arrow's text for it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows: list[list[Any]] = []
    for part in text_slices(table):
        columns = []
        for column in part.columns:
            try:
                columns.append(column.to_pylist())
            except (OverflowError, ValueError, pa.ArrowException):
                columns.append(pc.cast(column, pa.string()).to_pylist())
        rows += [list(row) for row in zip(*columns, strict=True)]
    return unique_names(table.column_names), rows
