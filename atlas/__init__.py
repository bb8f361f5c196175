"""svd-atlas: a persistent, searchable atlas of transformer weight SVDs.

import atlas
a = atlas.open("data/atlas")
a.sql("SELECT model_id, n_layers FROM models").to_pandas()

w = atlas.open("my/atlas", write=True)   # created if needed
w.ingest("random:gpt2-tiny")
w.check().ok

Every command of ``svd-atlas`` is one call here: a method of :class:`Atlas`, or one of the
module's functions (``coherence``; ``ingest``, ``load`` and ``check`` of a location, for an
atlas that cannot be opened yet).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from atlas.core.errors import AtlasError, DamagedIndex

if TYPE_CHECKING:
    from atlas.api import Atlas
    from atlas.core.progress import Progress
    from atlas.writing import CheckReport, IngestResult, LoadResult, Model
    from query.coherence import ListCoherence

__all__ = [
    "Atlas",
    "AtlasError",
    "CheckReport",
    "DamagedIndex",
    "IngestFailed",
    "IngestResult",
    "LoadResult",
    "check",
    "coherence",
    "ingest",
    "load",
    "open",
]


def open(  # noqa: A001 - mirrors builtins.open on purpose
    location: str | os.PathLike[str],
    *,
    write: bool = False,
    memory_limit: int | str | None = None,
) -> Atlas:
    """Open an atlas directory, a bundle file or a Parquet tree (a folder or a URL).

    Read-only: ``write=True`` (atlas directories only) lets ``sql`` keep your own tables in the
    atlas's ``user.duckdb``; model data always stays read-only. ``memory_limit`` (bytes, or a
    size such as ``"8GB"``; default 2 GB) bounds the memory of every statement of the handle,
    yours and the library's together: a query that needs more is refused with one line.
    """
    from atlas.api import Atlas

    return Atlas.open(location, write=write, memory_limit=memory_limit)


def coherence(*lists: str | Sequence[str]) -> list[ListCoherence]:
    """Score token lists ("fire, flame, smoke" or a list of strings), each led by its percentile
    among random lists of the same length (see :func:`atlas.api.coherence`)."""
    from atlas.api import coherence as score

    return score(*lists)


def ingest(location: str | os.PathLike[str], *models: Model, **options: Any) -> IngestResult:
    """Decompose models into the atlas at ``location`` (created if needed); the same as
    ``atlas.open(location, write=True).ingest(...)`` (see :meth:`Atlas.ingest`)."""
    from atlas.writing import ingest as run

    return run(location, *models, **options)


def load(
    location: str | os.PathLike[str],
    bundle: str | os.PathLike[str],
    replace: bool = False,
    progress: Progress | None = None,
) -> list[LoadResult]:
    """Import a bundle's models into the atlas at ``location`` (created if needed), verified
    first, all or nothing (see :meth:`Atlas.load`)."""
    from atlas.writing import load as run

    return run(location, bundle, replace, progress)


def check(location: str | os.PathLike[str], repair: bool = False) -> CheckReport:
    """Verify the atlas at ``location``, even one that cannot be opened; ``repair`` fixes
    what it can (see :meth:`Atlas.check`)."""
    from atlas.writing import check as run

    return run(location, repair)


_PUBLIC_TYPES = {
    "Atlas": "atlas.api",
    "CheckReport": "atlas.writing",
    "IngestFailed": "atlas.writing",
    "IngestResult": "atlas.writing",
    "LoadResult": "atlas.writing",
}


def __getattr__(name: str) -> Any:
    # The façade imports the query layer, which imports the storage core under this package:
    # importing it lazily keeps ``import atlas.core...`` from pulling in the layers above.
    if name in _PUBLIC_TYPES:
        import importlib

        return getattr(importlib.import_module(_PUBLIC_TYPES[name]), name)
    raise AttributeError(name)
