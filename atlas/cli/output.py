"""Printing results: an aligned table for people, strict JSON or CSV for machines.

Text that came from a user or a vocabulary is printed with control characters escaped, so a
terminal escape sequence in a token or a model id is shown, never obeyed.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from typing import Any

import click

from atlas.interface import csv_cell, dumps, table_cell

FORMATS = ("table", "json", "csv")
MAX_TABLE_ROWS = 500


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


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str = "table") -> None:
    """Print ``rows`` (dicts) restricted to ``columns`` in the chosen format."""
    if fmt == "json":
        click.echo(dumps([{c: r.get(c) for c in columns} for r in rows]))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([csv_cell(r.get(c)) for c in columns])
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


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
