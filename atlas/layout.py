"""The atlas directory on disk, and the one way it changes: publishing a finished store.

::

    ATLAS/
      catalog.json          format version, the published models and the id counters
      store/<uuid>/         one model: model.duckdb, residual.faiss, unembed.npy, manifest.json
      .staging/<uuid>/      a store being written; never read by anyone else
      .lock                 held by the one process that may publish

A store is written completely under ``.staging``, synced, moved into ``store/`` and only then
named in a new ``catalog.json`` that replaces the old one with an atomic rename. Readers read the
catalog once and open the stores it names read-only, so they never see a half-written model and
never contend with the writer for DuckDB's file lock. A crash at any moment leaves the previous
catalog in place; what it left under ``.staging`` or ``store/`` is unreferenced and swept by
the next ingest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.errors import AtlasError
from atlas.formats import require_format

FORMAT = "svd-atlas"
FORMAT_VERSION = 1
CATALOG = "catalog.json"
MODEL_DB = "model.duckdb"
RESIDUAL_INDEX = "residual.faiss"
UNEMBED = "unembed.npy"  # centered W_U, [d_vocab, d_model] float16: turns text into a query
MANIFEST = "manifest.json"
# Stores replaced or abandoned less than this long ago are kept for readers that still use them.
SWEEP_GRACE_SECONDS = 600


@dataclass
class CatalogEntry:
    """One published model: where its store is and which ids it owns."""

    store: str
    first_direction_id: int
    n_directions: int
    first_matrix_id: int
    n_matrices: int


@dataclass
class Catalog:
    models: dict[str, CatalogEntry] = field(default_factory=dict)
    next_direction_id: int = 0
    next_matrix_id: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "next_direction_id": self.next_direction_id,
            "next_matrix_id": self.next_matrix_id,
            "models": {name: vars(entry) for name, entry in sorted(self.models.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: Path) -> Catalog:
        require_format(data, FORMAT, FORMAT_VERSION, source, "catalog")
        return cls(
            models={k: CatalogEntry(**v) for k, v in data["models"].items()},
            next_direction_id=int(data["next_direction_id"]),
            next_matrix_id=int(data["next_matrix_id"]),
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` and the directories holding them to disk."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(Path(root) / name, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(root))


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class AtlasDir:
    """An atlas directory: reading its catalog, and (under the lock) publishing to it."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG

    def exists(self) -> bool:
        return self.catalog_path.is_file()

    def read_catalog(self) -> Catalog:
        if not self.exists():
            return Catalog()
        try:
            data = json.loads(self.catalog_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AtlasError(f"cannot read {self.catalog_path}: {exc}") from exc
        return Catalog.from_json(data, self.catalog_path)

    def store_path(self, entry: CatalogEntry) -> Path:
        return self.root / entry.store

    def ensure_writable(self) -> None:
        """Create the atlas directory if needed, or fail with one clear line."""
        if self.root.exists() and not self.root.is_dir():
            raise AtlasError(f"atlas path {self.root} exists and is not a directory")
        if self.root.is_dir() and any(self.root.iterdir()) and not self.exists():
            raise AtlasError(f"{self.root} is not empty and holds no svd-atlas catalog")
        try:
            (self.root / ".staging").mkdir(parents=True, exist_ok=True)
            (self.root / "store").mkdir(exist_ok=True)
            probe = self.root / ".staging" / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
            if not self.exists():
                self.write_catalog(Catalog())
        except OSError as exc:
            raise AtlasError(f"atlas path {self.root} is not writable: {exc.strerror}") from exc

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the atlas's writer lock; a second writer waits for the first to publish."""
        self.ensure_writable()
        with open(self.root / ".lock", "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another writer to release {self.root} ...", flush=True)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def new_staging_dir(self) -> Path:
        path = self.root / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def publish(self, model_id: str, staging: Path, entry: CatalogEntry, catalog: Catalog) -> None:
        """Move a finished store into place and name it in a new catalog, atomically.

        Must be called under :meth:`writer_lock`. ``entry.store`` is filled in here. Whatever
        the model replaces stays on disk until a later sweep, for readers that opened it.
        """
        self.publish_many([(model_id, staging, entry)], catalog)

    def publish_many(self, stores: list[tuple[str, Path, CatalogEntry]], catalog: Catalog) -> None:
        """:meth:`publish` for several models at once: one new catalog names all of them."""
        for model_id, staging, entry in stores:
            fsync_tree(staging)
            final = self.root / "store" / staging.name
            os.replace(staging, final)
            entry.store = f"store/{staging.name}"
            replaced = catalog.models.get(model_id)
            if replaced is not None and self.store_path(replaced).is_dir():
                os.utime(self.store_path(replaced))  # starts its sweep grace period now
            catalog.models[model_id] = entry
        _fsync_dir(self.root / "store")
        self.write_catalog(catalog)

    def write_catalog(self, catalog: Catalog) -> None:
        tmp = self.root / f".{CATALOG}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(catalog.to_json(), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.catalog_path)
        _fsync_dir(self.root)

    def sweep(self, catalog: Catalog) -> None:
        """Delete stores and staging folders that no catalog entry names and nobody still uses.

        Runs under the writer lock, so no live staging folder of another writer exists; stores
        are kept for a grace period after they stop being referenced.
        """
        referenced = {entry.store for entry in catalog.models.values()}
        now = time.time()
        for stale in (self.root / ".staging").glob("*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:  # e.g. the write probe of a writer killed inside ensure_writable
                stale.unlink(missing_ok=True)
        for store in (self.root / "store").glob("*"):
            if f"store/{store.name}" in referenced:
                continue
            if now - store.stat().st_mtime > SWEEP_GRACE_SECONDS:
                shutil.rmtree(store, ignore_errors=True)
        for tmp in self.root.glob(f".{CATALOG}.*.tmp"):
            tmp.unlink(missing_ok=True)
