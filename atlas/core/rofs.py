"""A read-only view of one folder or object-store prefix, for a locked DuckDB session.

A Parquet tree is read by DuckDB through this fsspec file system, registered on the session
under the ``svdatlas://`` protocol, which is the only place the locked session may open
(``allowed_directories``). Every path resolves inside the root (``..`` is refused, and on a
local disk so is a link to a file outside it) and every
operation that would write (an open for writing, a delete, a move, a new folder) is refused.

DuckDB reads one open file from several threads, each seeking and then reading; a file object
with one shared position would hand a thread bytes from where another one seeked to. Files are
therefore opened as :class:`PositionalFile`, which keeps a position per thread and reads by
range.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import PurePosixPath
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "svdatlas"
_WRITING = (
    "rm", "rm_file", "_rm", "rmdir", "mkdir", "makedirs", "mv", "move", "cp_file", "copy",
    "put", "put_file", "pipe", "pipe_file", "touch", "write_bytes", "write_text",
)  # fmt: skip


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise PermissionError("the atlas is read-only")


class ReadOnlyRoot(DirFileSystem):
    """``fs`` seen from ``root``, read-only; see the module notes."""

    protocol = PROTOCOL

    def __init__(self, fs: AbstractFileSystem, root: str):
        super().__init__(path=root, fs=fs)
        for name in _WRITING:
            setattr(self, name, _refuse)
        # on a local disk a file of the tree may be a link: where it really lies must be inside
        self._real_root = os.path.realpath(root) if isinstance(fs, LocalFileSystem) else None

    def _join(self, path: Any) -> Any:
        if isinstance(path, str):
            relative = path.split("://", 1)[-1]
            if ".." in PurePosixPath(relative).parts:
                raise PermissionError(f"{path}: outside the atlas")
            path = relative.lstrip("/")
        return super()._join(path)

    def glob(self, path: str, **kwargs: Any) -> Any:
        """DirFileSystem's glob with the root taken literally: a tree in a folder named
        ``c[2]`` or ``b*`` is that folder, not a pattern (which matched none, or a neighbour)."""
        literal = re.sub(r"([*?\[])", r"[\1]", self.path)
        pattern = self._join(path)
        found = self.fs.glob(literal + pattern[len(self.path) :], **kwargs)
        return self._relpath_detail(found) if kwargs.get("detail") else self._relpath(found)

    def open(self, path: str, mode: str = "rb", *_args: Any, **_kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            _refuse()
        full = self._join(path)
        if self._real_root is not None:
            real = os.path.realpath(full)
            if os.path.commonpath([real, self._real_root]) != self._real_root:
                raise PermissionError(
                    f"{path.split('://', 1)[-1]}: a link to a file outside the atlas"
                )
        return PositionalFile(self.fs, full, int(self.fs.size(full)))

    _open = open


class PositionalFile:
    """A read-only binary file whose position is per thread; reads are range reads."""

    def __init__(self, fs: AbstractFileSystem, path: str, size: int):
        self._fs, self._path, self.size = fs, path, size
        self._positions = threading.local()
        self.closed = False

    def tell(self) -> int:
        return int(getattr(self._positions, "at", 0))

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.tell(), 2: self.size}[whence]
        self._positions.at = max(0, base + offset)
        return int(self._positions.at)

    def read(self, n: int = -1) -> bytes:
        start = self.tell()
        end = self.size if n is None or n < 0 else min(self.size, start + n)
        if start >= end:
            return b""
        data = self._fs.cat_file(self._path, start=start, end=end)
        self._positions.at = start + len(data)
        return bytes(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> PositionalFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
