"""svd-atlas: a persistent, searchable atlas of transformer weight SVDs.

import atlas
a = atlas.open("data/atlas")
a.sql("SELECT model_id, n_layers FROM models").to_pandas()
"""

from __future__ import annotations

import os

from atlas.errors import AtlasError
from atlas.handle import Atlas

__all__ = ["Atlas", "AtlasError", "open"]


def open(path: str | os.PathLike[str]) -> Atlas:  # noqa: A001 - mirrors builtins.open on purpose
    """Open ``path`` read-only: an atlas directory, a bundle file or an exported Parquet tree."""
    from atlas.sources import open_atlas

    return open_atlas(path)
