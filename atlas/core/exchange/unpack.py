"""Verifying a bundle while copying its members out, before anything uses them.

Python's tar extraction is never used: each member is checked (name, type, listed in the
manifest, size) and then copied by this module, byte by byte through sha256, to a path it
builds itself under a fresh private folder. Any mismatch is a refusal, and the caller deletes
that folder; the atlas has not been touched at that point.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
from pathlib import Path, PurePosixPath

from atlas.core.errors import AtlasError, one_line
from atlas.core.exchange.bundle_format import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    BundleManifest,
    is_known_member,
)
from atlas.core.jsondata import load_json

_CHUNK = 1 << 20


def unpack_bundle(bundle: Path, dest: Path) -> BundleManifest:
    """Verify ``bundle`` completely and copy its members under ``dest`` (an empty folder)."""
    if not bundle.is_file():
        raise AtlasError(f"no bundle file at {bundle}")
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            return _unpack(tar, str(bundle), dest)
    except (tarfile.TarError, EOFError) as exc:
        reason = one_line(exc)
        raise AtlasError(f"{bundle} is truncated or not an svd-atlas bundle ({reason})") from None


def _unpack(tar: tarfile.TarFile, source: str, dest: Path) -> BundleManifest:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isreg():
        raise AtlasError(f"{source} is not an svd-atlas bundle: it must start with {MANIFEST_NAME}")
    if first.size > MAX_MANIFEST_BYTES:
        raise AtlasError(f"{source} has an implausibly large manifest ({first.size} bytes)")
    raw = _read_member(tar, first)
    try:
        data = load_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AtlasError(f"{source} has an unreadable manifest: {one_line(exc)}") from None
    manifest = BundleManifest.from_json(data, source)

    seen: set[str] = set()
    while (member := tar.next()) is not None:
        name = member.name
        _check_name(name, source)
        if not member.isreg():
            raise AtlasError(
                f"{source}: member {name!r} is a link or special file, not a regular file; "
                "a bundle holds only regular files"
            )
        unread = name in manifest.unread  # a version 1 bundle's index: verified, not kept
        expected = manifest.unread[name] if unread else manifest.members.get(name)
        if expected is None or not (unread or is_known_member(name)):
            raise AtlasError(f"{source}: member {name!r} is not listed in the bundle manifest")
        if name in seen:
            raise AtlasError(f"{source}: member {name!r} appears twice")
        seen.add(name)
        if member.size != expected.bytes:
            raise AtlasError(
                f"{source}: member {name!r} has {member.size} bytes, the manifest says "
                f"{expected.bytes}"
            )
        digest = _copy_member(tar, member, None if unread else dest / name)
        if digest != expected.sha256:
            raise AtlasError(f"{source}: checksum mismatch for member {name!r}: it was altered")
    missing = sorted((set(manifest.members) | set(manifest.unread)) - seen)
    if missing:
        raise AtlasError(
            f"{source} is incomplete (truncated?): missing {len(missing)} member(s), "
            f"e.g. {missing[0]!r}"
        )
    return manifest


def _check_name(name: str, source: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or name.startswith("~"):
        raise AtlasError(f"{source}: member {name!r} escapes the destination folder; refused")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    assert fh is not None  # a regular file always has data
    data = fh.read()
    if len(data) != member.size:
        raise AtlasError(f"member {member.name!r} is truncated")
    return data


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path | None) -> str:
    """Copy ``member`` to ``target`` (None: only read it); returns its sha256."""
    fh = tar.extractfile(member)
    assert fh is not None
    digest, n = hashlib.sha256(), 0
    with contextlib.ExitStack() as stack:
        out = None
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(open(target, "xb"))
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
            if out is not None:
                out.write(block)
            n += len(block)
    if n != member.size:
        raise AtlasError(f"member {member.name!r} is truncated")
    return digest.hexdigest()
