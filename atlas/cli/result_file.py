"""``svd-atlas sql --out FILE``: a query result written as a file, in the format its extension
names (or ``--out-format``), replacing whatever was there only once it is complete."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from atlas.errors import AtlasError, one_line
from atlas.interface import csv_cell, dumps, jsonable, result_rows

OUT_FORMATS = ("parquet", "csv", "json", "jsonl")
EXTENSIONS = {"parquet": "parquet", "pq": "parquet", "csv": "csv", "json": "json",
              "jsonl": "jsonl", "ndjson": "jsonl"}  # fmt: skip


def out_format(out: Path, given: str | None) -> str:
    """``given``, or the format ``out``'s extension names; one line when it names none."""
    if given is not None:
        return given
    extension = out.suffix.lower().removeprefix(".")
    if extension in EXTENSIONS:
        return EXTENSIONS[extension]
    raise AtlasError(
        f"cannot tell the format of {out} from its extension: name it "
        f"{', '.join('.' + e for e in EXTENSIONS)}, or give --out-format {'|'.join(OUT_FORMATS)}"
    )


def write_result(table: Any, out: Path, fmt: str) -> None:
    """``table`` as a new file at ``out``: written beside it, then renamed over it, so that
    whatever ``out`` was (a hard link to an atlas file, say) is replaced, never written into.
    A failure names ``out``, never the temporary file."""
    if not out.parent.is_dir():
        raise AtlasError(f"cannot write {out}: the folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        _WRITERS[fmt](table, tmp)
        os.replace(tmp, out)
    except OSError as exc:
        why = (exc.strerror or one_line(exc)).replace(str(tmp), str(out))
        raise AtlasError(f"cannot write {out}: {why}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)


def _csv(table: Any, path: Path) -> None:
    names, rows = result_rows(table)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([csv_cell(v) for v in row] for row in rows)


def _json(table: Any, path: Path) -> None:
    names, rows = result_rows(table)
    records = [dict(zip(names, row, strict=True)) for row in rows]
    path.write_text(dumps(records) + "\n", encoding="utf-8")


def _jsonl(table: Any, path: Path) -> None:
    names, rows = result_rows(table)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            record = jsonable(dict(zip(names, row, strict=True)))
            fh.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


_WRITERS = {"parquet": _parquet, "csv": _csv, "json": _json, "jsonl": _jsonl}
