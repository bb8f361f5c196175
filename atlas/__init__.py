"""svd-atlas: a persistent, searchable atlas of transformer weight SVDs.

import atlas
a = atlas.open("data/atlas")
a.sql("SELECT model_id, n_layers FROM models").to_pandas()
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from atlas.core.errors import AtlasError, DamagedIndex

if TYPE_CHECKING:
    from atlas.api import Atlas
    from query.coherence import ListCoherence

__all__ = ["Atlas", "AtlasError", "DamagedIndex", "coherence", "open"]


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


def __getattr__(name: str) -> Any:
    # The façade imports the query layer, which imports the storage core under this package:
    # importing it lazily keeps ``import atlas.core...`` from pulling in the layers above.
    if name == "Atlas":
        from atlas.api import Atlas

        return Atlas
    raise AttributeError(name)
