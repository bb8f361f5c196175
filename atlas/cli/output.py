"""Printing results: an aligned table for people, strict JSON or CSV for machines.

Text that came from a user or a vocabulary is printed with control characters escaped, so a
terminal escape sequence in a token or a model id is shown, never obeyed.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

import click

FORMATS = ("table", "json", "csv")
MAX_LIST_CELL = 24  # longer lists (vectors, spectra) are abbreviated in tables
MAX_TABLE_ROWS = 500
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters (escape sequences, bells, NULs) shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def format_option(fn: Any) -> Any:
    """The ``--format table|json|csv`` option every listing command takes."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table for reading, json or csv for machines.",
    )(fn)


def text_or_json_option(text_help: str) -> Any:
    """``--format text|json`` for commands whose output is lines rather than a table."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help=text_help,
    )


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


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str = "table") -> None:
    """Print ``rows`` (dicts) restricted to ``columns`` in the chosen format."""
    if fmt == "json":
        click.echo(dumps([{c: r.get(c) for c in columns} for r in rows]))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_csv_cell(r.get(c)) for c in columns])
    else:
        print_table(rows[:MAX_TABLE_ROWS], columns)
        if len(rows) > MAX_TABLE_ROWS:
            click.echo(f"... {len(rows) - MAX_TABLE_ROWS} more rows (use --format csv or json)")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """An aligned plain-text table."""
    cells = [[table_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def table_cell(value: Any) -> str:
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


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | tuple | dict):
        return json.dumps(jsonable(value), ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
