"""Checking the format name and version of the JSON files that describe atlas artefacts.

Each format (the atlas directory's catalog, the bundle, the Parquet tree) has one version
number, raised whenever its contract changes. This svd-atlas reads its own version and the
one before it, which the format's one upgrade function turns into the current one
(``atlas.core.upgrade`` for an atlas directory, ``bundle_format.upgrade_manifest`` and
``tree_format.upgrade_marker``). Any other version is one clear refusal.
"""

from __future__ import annotations

from typing import Any

from atlas.core.errors import AtlasError, UnsupportedFormat


def require_format(
    data: Any, name: str, current: int, source: object, what: str, too_old: str
) -> int:
    """The version of ``data`` (a parsed JSON object) if it is a ``name`` document this
    svd-atlas reads: ``current``, or ``current - 1`` (which the caller upgrades). Otherwise one
    clear refusal naming ``source``; ``too_old`` says what to do with an older one."""
    if not isinstance(data, dict) or data.get("format") != name:
        raise AtlasError(f"{source} is not an svd-atlas {what}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise AtlasError(
            f"{source} is a damaged svd-atlas {what}: its format_version {version!r} is not a "
            "positive whole number"
        )
    reads = f"this svd-atlas reads versions {current - 1} and {current}"
    if version > current:
        raise UnsupportedFormat(
            f"{source} was made by a newer svd-atlas ({what} format version {version}; {reads}): "
            "upgrade svd-atlas"
        )
    if version < current - 1:
        raise UnsupportedFormat(
            f"{source} is too old ({what} format version {version}; {reads}): {too_old}"
        )
    return version
