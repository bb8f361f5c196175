"""The atlas a server serves: one open handle at a time, replaced when the catalog changes.

Every request leases the current handle for its whole duration, so that a response is built
from one catalog: a model replaced meanwhile is never half old and half new. When
``catalog.json`` changes (an ingest or a load published), the next request starts opening a
new handle in the background, with its indexes loaded (up to the server's index memory), and
keeps being served by the old one until the new one is ready; the old one is closed when its
last lease ends. The handles hold their files open (DuckDB databases, memory-mapped indexes
and unembeddings), so a store that a replace removed from the disk stays readable for the
requests still using it.

A bundle or a Parquet tree has no catalog that changes: it is opened once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import atlas
from atlas.api import Atlas

log = logging.getLogger("svd_atlas.server")

CHECK_INTERVAL_SECONDS = 0.5  # how often a request may look at the catalog's file


@dataclass
class _Handle:
    atlas: Atlas
    signature: tuple[int, int, int] | None
    leases: int = 0
    retired: bool = False


def _catalog_signature(location: str) -> tuple[int, int, int] | None:
    """What changes when a catalog is published (it is replaced by a rename): inode, mtime
    and size; None for a location without a catalog (a bundle or a Parquet tree)."""
    try:
        st = (Path(location) / "catalog.json").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _open(location: str, index_memory: int, memory_limit: int | str | None) -> _Handle:
    signature = _catalog_signature(location)  # read before opening: a later change is seen
    handle = atlas.open(location, memory_limit=memory_limit)
    handle.load_indexes(index_memory)
    return _Handle(handle, signature)


class LiveAtlas:
    """The current handle on ``location``, swapped for a fresh one after each publish."""

    def __init__(self, location: str, index_memory: int, memory_limit: int | str | None = None):
        self.location, self.index_memory = location, index_memory
        self.memory_limit = memory_limit  # of each handle's queries together (atlas.open)
        self.generation = 0  # handles opened after the first
        self._lock = threading.Lock()
        self._current = _open(location, index_memory, memory_limit)
        self._watching = self._current.signature is not None
        self._checked = time.monotonic()
        self._reopening = False
        self._failed: tuple[int, int, int] | None = None  # a catalog that could not be opened

    @contextlib.contextmanager
    def lease(self) -> Iterator[Atlas]:
        """The current handle, kept open until the block ends."""
        self._notice_changes()
        with self._lock:
            handle = self._current
            handle.leases += 1
        try:
            yield handle.atlas
        finally:
            with self._lock:
                handle.leases -= 1
                close = handle.retired and handle.leases == 0
            if close:
                handle.atlas.close()

    def _notice_changes(self) -> None:
        if not self._watching:
            return
        now = time.monotonic()
        with self._lock:
            if self._reopening or now - self._checked < CHECK_INTERVAL_SECONDS:
                return
            self._checked = now
            signature = _catalog_signature(self.location)
            if signature in (self._current.signature, self._failed):
                return
            self._reopening = True
        threading.Thread(target=self._reopen, name="svd-atlas-reopen", daemon=True).start()

    def _reopen(self) -> None:
        signature = _catalog_signature(self.location)
        try:
            fresh = _open(self.location, self.index_memory, self.memory_limit)
        except Exception as exc:  # keep serving the old handle until the catalog changes again
            log.warning("could not open the changed atlas (%s); still serving the old one", exc)
            with self._lock:
                self._reopening = False
                self._failed = signature
            return
        with self._lock:
            old, self._current = self._current, fresh
            old.retired = True
            close = old.leases == 0
            self.generation += 1
            self._reopening = False
        if close:
            old.atlas.close()
        log.info("the atlas changed: now serving %s", ", ".join(fresh.atlas.model_ids()))

    def close(self) -> None:
        with self._lock:
            handle = self._current
            handle.retired = True
            close = handle.leases == 0
        if close:
            handle.atlas.close()
