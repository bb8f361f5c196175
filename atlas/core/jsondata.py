"""Query results as strict JSON data and CSV cells, the same for the CLI and the server."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any


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
    """A CSV cell: lists and objects as JSON text, NaN and infinities empty."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(jsonable(value), ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value
