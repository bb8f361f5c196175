"""What a location names (``--atlas``, ``atlas.open``), and the reader for each.

- an atlas directory (``catalog.json``): :class:`atlas.core.reader.StoreReader`;
- a bundle file (``svd-atlas export -o FILE``): verified and loaded into a private temporary
  atlas that is deleted on close (:class:`BundleReader`); nothing is imported anywhere else;
- a Parquet tree (``svd-atlas export --parquet DEST``), a folder or a URL such as
  ``s3://bucket/prefix``: :class:`atlas.core.exchange.parquet_reader.ParquetReader`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

from atlas.core.errors import AtlasError
from atlas.core.exchange.tree_format import MARKER
from atlas.core.memlimit import parse_memory_limit
from atlas.core.reader import Reader, StoreReader


def open_reader(
    location: str | os.PathLike[str],
    write: bool = False,
    memory_limit: int | str | None = None,
) -> Reader:
    """The reader for whatever ``location`` is (see the module notes), its session bounded by
    ``memory_limit`` (``atlas.core.memlimit``)."""
    # the Parquet reader (fsspec, asyncio, ssl: 50 ms) and the bundle loader are imported
    # only for their sources: an atlas directory, what a fresh CLI process mostly opens,
    # needs neither
    if isinstance(location, str) and "://" in location:
        _refuse_write(write, location)
        return _parquet_reader(location, memory_limit)
    path = Path(location)
    if path.is_file():
        _refuse_write(write, location)
        return BundleReader(path, memory_limit)
    if (path / MARKER).is_file():
        _refuse_write(write, location)
        return _parquet_reader(str(path), memory_limit)
    return StoreReader(path, write=write, memory_limit=memory_limit)


def _parquet_reader(location: str, memory_limit: int | str | None) -> Reader:
    from atlas.core.exchange.parquet_reader import ParquetReader

    return ParquetReader(location, memory_limit)


def _refuse_write(write: bool, location: object) -> None:
    if write:
        raise AtlasError(f"{location} is not an atlas directory: only an atlas keeps your tables")


class BundleReader(StoreReader):
    """A bundle opened read-only: verified, then loaded into a private temporary atlas that is
    deleted on close."""

    def __init__(self, bundle: Path, memory_limit: int | str | None = None):
        parse_memory_limit(memory_limit)  # a bad limit is refused before the bundle is loaded
        tmp = Path(tempfile.mkdtemp(prefix="svd-atlas-open-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, tmp, ignore_errors=True)
        try:
            from atlas.core.exchange.load import load_bundle

            load_bundle(tmp / "atlas", bundle)
            super().__init__(tmp / "atlas", location=str(bundle), memory_limit=memory_limit)
        except BaseException:
            self._cleanup()
            raise

    def close(self) -> None:
        super().close()
        self._cleanup()
