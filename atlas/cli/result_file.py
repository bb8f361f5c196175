"""``svd-atlas sql --out FILE``: a query result written as a file, in the format its extension
names (or ``--out-format``), replacing whatever was there only once it is complete."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa

from atlas.errors import AtlasError, one_line
from atlas.interface import csv_cell, dumps, jsonable, result_rows, text_slices, unique_names

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


def refuse_inside(out: Path, atlas_location: str) -> None:
    """An output file may not land inside the atlas (or overwrite the bundle it reads)."""
    if "://" in str(atlas_location):
        return
    root = Path(atlas_location).resolve()
    target = out.resolve()
    if target == root or root in target.parents:
        raise AtlasError(f"{out} is inside the atlas {atlas_location}: write results elsewhere")


def output_file(out: Path, atlas_location: str) -> Path:
    """The file a result or a figure named ``out`` is written to: the one a link names (the
    link stays), never inside the atlas, and only in place of a regular file: the new file is
    renamed over what was there, which a device, a pipe or a folder must not be."""
    refuse_inside(out, atlas_location)
    target = out.resolve()
    if target.exists() and not target.is_file():
        what = "a directory" if target.is_dir() else "not a regular file (a device or a pipe)"
        raise AtlasError(f"cannot write {out}: it is {what}; give a file name")
    return target


def write_result(reader: Any, out: Path, fmt: str) -> int:
    """The rows of ``reader`` (a ``pyarrow.RecordBatchReader``) as a new file at ``out``,
    written batch by batch as they come, then renamed over ``out``, so that whatever ``out``
    was (a hard link to an atlas file, say) is replaced, never written into. Returns the rows
    written. A failure names ``out``, never the temporary file."""
    if not out.parent.is_dir():
        raise AtlasError(f"cannot write {out}: the folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            rows = _parquet(reader, tmp)
        else:
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                rows = write_rows(reader, fh, fmt)
        os.replace(tmp, out)
    except OSError as exc:
        why = (exc.strerror or one_line(exc)).replace(str(tmp), str(out))
        raise AtlasError(f"cannot write {out}: {why}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def write_rows(reader: Any, fh: TextIO, fmt: str) -> int:
    """The rows of ``reader`` as text on ``fh``, a batch at a time: csv, json (one array,
    exactly as ``--format json`` prints a list) or jsonl (an object a line). Returns how many
    rows were written."""
    names = unique_names(reader.schema.names)
    writer = csv.writer(fh, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(names)
    n = 0
    for part in (p for batch in reader for p in text_slices(pa.Table.from_batches([batch]))):
        _, rows = result_rows(part)  # a bounded slice of the result at a time
        if fmt == "csv":
            writer.writerows([csv_cell(v) for v in row] for row in rows)
            n += len(rows)
            continue
        for row in rows:
            record = dict(zip(names, row, strict=True))
            if fmt == "jsonl":
                fh.write(json.dumps(jsonable(record), ensure_ascii=False, allow_nan=False) + "\n")
            else:  # an element of dumps(list): one more space of indent, a comma between
                fh.write(("[\n " if n == 0 else ",\n ") + dumps(record).replace("\n", "\n "))
            n += 1
    if fmt == "json":
        fh.write("\n]\n" if n else "[]\n")
    return n


def _parquet(reader: Any, path: Path) -> int:
    import pyarrow.parquet as pq

    n = 0
    with pq.ParquetWriter(path, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            n += batch.num_rows
    return n


class FirstRows:
    """A result's first ``max_rows`` rows (all of them for None), and whether it held more
    (``cut``, known once they are read: one batch past them is read to tell)."""

    def __init__(self, max_rows: int | None):
        self.max_rows, self.cut = max_rows, False

    def of(self, reader: Any) -> Any:
        """``reader``'s first rows, as a ``RecordBatchReader``."""
        if self.max_rows is None:
            return reader
        return pa.RecordBatchReader.from_batches(reader.schema, self._first(reader, self.max_rows))

    def _first(self, reader: Any, left: int) -> Iterator[pa.RecordBatch]:
        for batch in reader:
            if batch.num_rows > left:
                self.cut = True
            if left > 0:
                yield batch.slice(0, left)
                left -= min(left, batch.num_rows)
            if self.cut:
                return
