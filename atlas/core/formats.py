"""Checking the format name and version of the JSON files that describe atlas artefacts.

Each format (the atlas directory's catalog, the bundle, the Parquet tree) has one version
number, raised whenever its contract changes. This svd-atlas reads its own version and the
older ones its users may hold (``OLDEST``), which the format's one upgrade path turns into the
current one (``atlas.core.upgrade`` for an atlas directory, ``bundle_format.upgrade_manifest``
and ``tree_format.upgrade_marker``). Any other version is one clear refusal.
"""

from __future__ import annotations

from typing import Any

from atlas.core.errors import AtlasError, UnsupportedFormat

OLDEST = 1  # the oldest version of each format this svd-atlas reads (and upgrades)


def require_format(
    data: Any, name: str, current: int, source: object, what: str, too_old: str
) -> int:
    """The version of ``data`` (a parsed JSON object) if it is a ``name`` document this
    svd-atlas reads: ``OLDEST`` to ``current`` (the caller upgrades an older one). Otherwise one
    clear refusal naming ``source``; ``too_old`` says what to do with an older one."""
    if not isinstance(data, dict) or data.get("format") != name:
        raise AtlasError(f"{source} is not an svd-atlas {what}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise AtlasError(
            f"{source} is a damaged svd-atlas {what}: its format_version {version!r} is not a "
            "positive whole number"
        )
    reads = f"this svd-atlas reads versions {OLDEST} to {current}"
    if version > current:
        raise UnsupportedFormat(
            f"{source} was made by a newer svd-atlas ({what} format version {version}; {reads}): "
            "upgrade svd-atlas"
        )
    if version < OLDEST:
        raise UnsupportedFormat(
            f"{source} is too old ({what} format version {version}; {reads}): {too_old}"
        )
    return version
