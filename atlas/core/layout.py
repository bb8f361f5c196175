"""The atlas directory on disk, and the one way it changes: publishing a finished store.

::

    ATLAS/
      catalog.json          format version, the published models and the id counters
      store/<uuid>/         one model: model.duckdb, residual-NNNN.faiss (its FAISS index
                            in shards of whole layers), hit-rows.npy and hit-tokens.json
                            (what a search hit shows), unembed.npy, manifest.json
      .staging/<uuid>/      a store being written; never read by anyone else
      .lock                 held by the one process that changes the catalog
      .reserved             id counters past every id handed to a writer (published or not)

A store is written completely under ``.staging``, synced, moved into ``store/`` and only then
named in a new ``catalog.json`` that replaces the old one with an atomic rename. Readers read the
catalog once and open the stores it names read-only, so they never see a half-written model and
never contend with the writer for DuckDB's file lock. A crash at any moment leaves the previous
catalog in place; what it left under ``.staging`` or ``store/`` is unreferenced and swept later.

Writers hold ``.lock`` only to reserve ids (in ``.reserved``, so that the published state,
the catalog, changes only when a model is published) and to publish, not while they compute.
A staging folder can therefore be live while another writer sweeps: each one holds a lock on
its own ``.owner`` file, and the sweep removes only folders whose owner is gone. The folder is
created under a temporary name and renamed once its owner lock is held, so no sweep can see it
unowned. ``atlas.core.publish`` is the one path through these steps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.core.errors import AtlasError, PreviousFormat, one_line
from atlas.core.formats import require_format
from atlas.core.jsondata import load_json

FORMAT = "svd-atlas"
# 2: every store has every table and column of the contract (``models.weight_dtype`` included),
# its index as residual-NNNN.faiss shards of the types ``models.index_type`` names (flat or
# pq-rerank). 3: circuits (kind qk, composition tables, eigenvalue positivity), the embedding
# readout (``top_tokens.basis``) and ``models.format_version`` (``atlas.core.contents``).
# 4: each store's hit rows (``hit-rows.npy``, ``hit-tokens.json``: ``atlas.core.hit_rows``).
# Atlases of versions 1 to 3 are upgraded by ``svd-atlas check --repair``
# (``atlas.core.upgrade``); nothing else reads or writes them.
FORMAT_VERSION = 4
UPGRADE = "a repair (`check` with `repair`) upgrades it"
TOO_OLD = "re-ingest its models into a new atlas (`ingest`)"
CATALOG = "catalog.json"
MODEL_DB = "model.duckdb"
UNEMBED = "unembed.npy"  # centered W_U, [d_vocab, d_model] float16: turns text into a query
MANIFEST = "manifest.json"
OWNER = ".owner"  # in a staging folder: locked by the process writing it
RESERVED = ".reserved"
# What ensure_writable makes in a new atlas before its catalog: a folder holding only these
# is an atlas another writer is creating at this moment, not someone else's folder.
SKELETON = frozenset({".staging", "store", ".lock"})
# Stores replaced or abandoned less than this long ago are kept for readers that still use them.
DEFAULT_ATLAS = "./data/atlas"  # where every command looks unless told otherwise
SWEEP_GRACE_SECONDS = 600
REBUILD_CATALOG = "a repair (`check` with `repair`) rebuilds it from the stores' manifests"
STORE_NAME = re.compile(r"store/[0-9a-f]{32}")  # what a catalog entry may point at: nothing else


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
    """The published state; ``version`` is its format version (an upgrade raises it)."""

    models: dict[str, CatalogEntry] = field(default_factory=dict)
    next_direction_id: int = 0
    next_matrix_id: int = 0
    version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.version,
            "next_direction_id": self.next_direction_id,
            "next_matrix_id": self.next_matrix_id,
            "models": {name: vars(entry) for name, entry in sorted(self.models.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: Path, upgrading: bool = False) -> Catalog:
        """The catalog in ``data``; one of an older format version is refused with a line
        that says how to upgrade it, unless ``upgrading`` (the upgrade reads it)."""
        version = require_format(data, FORMAT, FORMAT_VERSION, source, "atlas", TOO_OLD)
        try:
            catalog = cls(
                models={str(k): CatalogEntry(**v) for k, v in data["models"].items()},
                next_direction_id=int(data["next_direction_id"]),
                next_matrix_id=int(data["next_matrix_id"]),
                version=version,
            )
            for model_id, entry in catalog.models.items():
                if not isinstance(entry.store, str) or not STORE_NAME.fullmatch(entry.store):
                    raise ValueError(f"{model_id!r} has store {entry.store!r}, not store/<id>")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            reason = one_line(exc)
            raise AtlasError(f"{source} is malformed ({reason}); {REBUILD_CATALOG}") from None
        if version != FORMAT_VERSION and not upgrading:
            raise PreviousFormat(
                f"{source.parent} is an atlas of format version {version}, made by an earlier "
                f"svd-atlas; this one reads and writes it once upgraded to version "
                f"{FORMAT_VERSION}: {UPGRADE}"
            )
        return catalog


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


def _owned(staging: Path) -> bool:
    """Whether a live writer holds ``staging``'s owner lock."""
    try:
        fh = open(staging / OWNER, "rb")  # noqa: SIM115
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def manifest_sizes(store: Path, wanted: Callable[[str], bool]) -> dict[str, int] | None:
    """The sizes the store's manifest lists for its files of which ``wanted(name)`` holds
    (what a derived file must match before it is read); None when the manifest cannot be read
    (``check`` reports it)."""
    try:
        members = load_json((store / MANIFEST).read_text(encoding="utf-8"))["members"]
        return {n: int(m["bytes"]) for n, m in members.items() if wanted(n)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


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

    def orphan_stores(self) -> list[Path]:
        """Store folders on disk (whether or not a catalog names them)."""
        return sorted(p for p in (self.root / "store").glob("*") if p.is_dir())

    def require_atlas(self) -> None:
        """Nothing if ``root`` holds a catalog; otherwise one line saying what to do."""
        if self.exists():
            return
        if self.root.is_dir() and self.orphan_stores():
            raise AtlasError(
                f"{self.root} has no {CATALOG} but holds {len(self.orphan_stores())} model "
                f"store(s); {REBUILD_CATALOG}"
            )
        raise AtlasError(
            f"no atlas at {self.root}, nor a bundle or Parquet tree (`ingest` creates an atlas)"
        )

    def read_catalog(self, upgrading: bool = False) -> Catalog:
        """The published catalog (see :meth:`Catalog.from_json` for ``upgrading``)."""
        if not self.exists():
            return Catalog()
        try:
            data = load_json(self.catalog_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            reason = one_line(exc, 200)
            raise AtlasError(
                f"cannot read {self.catalog_path} ({reason}); {REBUILD_CATALOG}"
            ) from None
        return Catalog.from_json(data, self.catalog_path, upgrading)

    def store_path(self, entry: CatalogEntry) -> Path:
        return self.root / entry.store

    def ensure_writable(self) -> None:
        """Create the atlas directory if needed, or fail with one clear line."""
        if self.root.exists() and not self.root.is_dir():
            raise AtlasError(f"atlas path {self.root} exists and is not a directory")
        if self.root.is_dir() and not self.exists():
            if self.orphan_stores():
                self.require_atlas()  # says how to rebuild a lost catalog
            strangers = any(not self._in_skeleton(p.name) for p in self.root.iterdir())
            # a writer creating the atlas at the same moment may have published its catalog
            # (and taken a model's lock) between the look above and the listing
            if strangers and not self.exists():
                raise AtlasError(f"{self.root} is not empty and holds no svd-atlas catalog")
        try:
            (self.root / ".staging").mkdir(parents=True, exist_ok=True)
            (self.root / "store").mkdir(exist_ok=True)
            probe = self.root / ".staging" / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
            if not self.exists():
                self._create_catalog()
        except OSError as exc:
            raise AtlasError(f"atlas path {self.root} is not writable: {exc.strerror}") from exc

    @contextlib.contextmanager
    def writer_lock(self, repairing: bool = False) -> Iterator[None]:
        """Hold the atlas's writer lock; a second writer waits for the first to publish.

        ``repairing``: the atlas may have lost its catalog (``check --repair`` rebuilds it).
        """
        if not repairing:
            self.ensure_writable()
        try:
            fh = open(self.root / ".lock", "a+b")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise AtlasError(f"atlas path {self.root} is not writable: {exc.strerror}") from None
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another writer to release {self.root} ...", file=sys.stderr)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A new staging folder, owned (locked) for as long as the block runs; it is removed
        when the block leaves it behind (a publish moves it away first)."""
        base = self.root / ".staging"
        base.mkdir(parents=True, exist_ok=True)
        tmp, path = base / f".new-{uuid.uuid4().hex}", base / uuid.uuid4().hex
        tmp.mkdir()
        owner = open(tmp / OWNER, "a+b")  # noqa: SIM115 - held open to keep the lock
        try:
            fcntl.flock(owner, fcntl.LOCK_EX)
            os.replace(tmp, path)
            yield path
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the rename never happened
            shutil.rmtree(path, ignore_errors=True)  # unless a publish moved it away
            owner.close()

    def publish_many(self, stores: list[tuple[str, Path, CatalogEntry]], catalog: Catalog) -> None:
        """Move finished stores into place and name them in one new catalog, atomically.

        Must be called under :meth:`writer_lock`, with every store already on disk
        (:func:`fsync_tree`, done before the lock is taken). Each ``entry.store`` is filled in
        here. Whatever a model replaces stays on disk until a later sweep, for readers that
        opened it.
        """
        for model_id, staging, entry in stores:
            (staging / OWNER).unlink(missing_ok=True)
            _fsync_dir(staging)  # its files were flushed before the lock: only the unlink here
            final = self.root / "store" / staging.name
            os.replace(staging, final)
            entry.store = f"store/{staging.name}"
            replaced = catalog.models.get(model_id)
            if replaced is not None and self.store_path(replaced).is_dir():
                os.utime(self.store_path(replaced))  # starts its sweep grace period now
            catalog.models[model_id] = entry
            catalog.next_direction_id = max(
                catalog.next_direction_id, entry.first_direction_id + entry.n_directions
            )
            catalog.next_matrix_id = max(
                catalog.next_matrix_id, entry.first_matrix_id + entry.n_matrices
            )
        _fsync_dir(self.root / "store")
        self.write_catalog(catalog)

    def write_catalog(self, catalog: Catalog) -> None:
        self._write_json(self.catalog_path, catalog.to_json())

    def read_reserved(self) -> tuple[int, int]:
        """The (direction, matrix) id counters past every id ever handed to a writer."""
        try:
            data = load_json((self.root / RESERVED).read_text(encoding="utf-8"))
            return int(data["next_direction_id"]), int(data["next_matrix_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0

    def write_reserved(self, next_direction_id: int, next_matrix_id: int) -> None:
        data = {"next_direction_id": next_direction_id, "next_matrix_id": next_matrix_id}
        self._write_json(self.root / RESERVED, data)

    def _write_json(self, path: Path, data: Any) -> None:
        """Replace ``path`` atomically and durably."""
        os.replace(self._flushed_json(path, data), path)
        _fsync_dir(self.root)

    def _create_catalog(self) -> None:
        """Write an empty catalog unless there is one. Linking never replaces: of two writers
        creating one atlas at once, the second must not replace the catalog the first may
        already have published a model in."""
        tmp = self._flushed_json(self.catalog_path, Catalog().to_json())
        try:
            os.link(tmp, self.catalog_path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        _fsync_dir(self.root)

    def _flushed_json(self, path: Path, data: Any) -> Path:
        """``data`` written and flushed to a new temporary file beside ``path``."""
        tmp = self.root / f".{path.name}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    @staticmethod
    def _in_skeleton(name: str) -> bool:
        """Whether ``name`` is something a writer creating the atlas makes before its catalog
        (see ``SKELETON``), its catalog's temporary file included."""
        return name in SKELETON or (name.startswith(f".{CATALOG}.") and name.endswith(".tmp"))

    def sweep(self, catalog: Catalog) -> None:
        """Delete stores and staging folders that no catalog entry names and nobody still uses.

        Runs under the writer lock. A staging folder is live while its owner holds the lock on
        its ``.owner`` file; stores are kept for a grace period after they stop being
        referenced, for readers that opened them.
        """
        referenced = {entry.store for entry in catalog.models.values()}
        now = time.time()
        for stale in (self.root / ".staging").glob("*"):
            if not stale.is_dir():  # e.g. the write probe of a writer killed in ensure_writable
                stale.unlink(missing_ok=True)
            elif stale.name.startswith(".new-"):
                if now - stale.stat().st_mtime > SWEEP_GRACE_SECONDS:
                    shutil.rmtree(stale, ignore_errors=True)
            elif not _owned(stale):
                shutil.rmtree(stale, ignore_errors=True)
        for store in (self.root / "store").glob("*"):
            if f"store/{store.name}" in referenced:
                continue
            if now - store.stat().st_mtime > SWEEP_GRACE_SECONDS:
                shutil.rmtree(store, ignore_errors=True)
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
