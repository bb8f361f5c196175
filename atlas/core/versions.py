"""The versions of svd-atlas and the libraries whose results an atlas records."""

from __future__ import annotations

import platform
from importlib import metadata

STORAGE_LIBRARIES = ("svd-atlas", "duckdb", "pyarrow", "numpy", "faiss-cpu")
COMPUTE_LIBRARIES = ("torch", "transformer_lens", "transformers")


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def library_versions(names: tuple[str, ...] = STORAGE_LIBRARIES) -> dict[str, str]:
    """Python's version and each named distribution's (``not installed`` when absent)."""
    return {"python": platform.python_version(), **{n: version(n) for n in names}}
