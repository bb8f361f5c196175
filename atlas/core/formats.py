"""Checking the format name and version of the JSON files that describe atlas artefacts."""

from __future__ import annotations

from typing import Any

from atlas.core.errors import AtlasError


def require_format(data: Any, name: str, max_version: int, source: object, what: str) -> int:
    """The version of ``data`` (a parsed JSON object) if it is a ``name`` document this
    svd-atlas can read; otherwise one clear refusal naming ``source``."""
    if not isinstance(data, dict) or data.get("format") != name:
        raise AtlasError(f"{source} is not an svd-atlas {what}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise AtlasError(
            f"{source} is a damaged svd-atlas {what}: its format_version {version!r} is not a "
            "positive whole number"
        )
    if version > max_version:
        raise AtlasError(
            f"{source} has {what} format version {version}; this svd-atlas reads up to "
            f"{max_version}: upgrade svd-atlas"
        )
    return version
