"""The one way a model enters an atlas, shared by ingest and bundle loading.

1. :func:`reserve_ids` takes the model's id ranges under the writer lock and advances the
   reservation counters (``.reserved``) at once: ids are never reused, whether the model is
   published, replaced later, or never finished (its reserved range simply stays unused).
   Every id below a counter (the catalog's or the reservations') is taken. The catalog itself
   changes only at publish, so an interrupted writer leaves it exactly as it was.
2. The caller builds the store in a staging folder (``AtlasDir.staging``) without the lock,
   with those ids, and records them in its manifest (:func:`store_record`), so that a lost
   catalog can be rebuilt from the stores (``atlas.core.repair``).
3. :func:`publish` takes the lock again, refuses a model that appeared meanwhile unless
   ``replace``, sweeps abandoned leftovers, and publishes with one catalog rename.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from atlas.core.errors import AtlasError
from atlas.core.layout import AtlasDir, Catalog, CatalogEntry, fsync_tree


@dataclass(frozen=True)
class IdRange:
    """The direction and matrix ids one model owns."""

    first_direction_id: int
    n_directions: int
    first_matrix_id: int
    n_matrices: int

    def entry(self) -> CatalogEntry:
        return CatalogEntry(store="", **asdict(self))


def refuse_existing(
    atlas_dir: AtlasDir, model_ids: list[str], replace: bool, other_name: str = ""
) -> None:
    """One clear line if a model id is already published and ``replace`` was not given
    (``other_name``: the parameter that chooses another id, in backticks: ```name```)."""
    if replace:
        return
    published = atlas_dir.read_catalog().models if atlas_dir.exists() else {}
    taken = [m for m in model_ids if m in published]
    if taken:
        alternative = f" or {other_name} to store it under another name" if other_name else ""
        raise AtlasError(
            f"model {taken[0]!r} is already in {atlas_dir.root}",
            hint=f"`replace` replaces it{alternative}",
        )


def reserve_ids(
    atlas_dir: AtlasDir,
    sizes: list[tuple[int, int]],
    preferred: list[tuple[int, int]] | None = None,
) -> list[IdRange]:
    """Reserve ``(n_directions, n_matrices)`` id ranges, one per model, in one catalog write.

    A ``preferred`` start (a bundle's own ids) is kept when it is at or above the counter, so
    that loading into an empty atlas keeps a bundle's ids; otherwise the range starts at the
    counter.
    """
    with atlas_dir.writer_lock():
        catalog = atlas_dir.read_catalog()
        reserved_d, reserved_m = atlas_dir.read_reserved()
        next_d = max(catalog.next_direction_id, reserved_d)
        next_m = max(catalog.next_matrix_id, reserved_m)
        ranges = []
        for i, (n_directions, n_matrices) in enumerate(sizes):
            want_d, want_m = preferred[i] if preferred else (-1, -1)
            first_d, first_m = max(want_d, next_d), max(want_m, next_m)
            next_d, next_m = first_d + n_directions, first_m + n_matrices
            ranges.append(IdRange(first_d, n_directions, first_m, n_matrices))
        atlas_dir.write_reserved(next_d, next_m)
    return ranges


def store_record(model_id: str, ids: IdRange, spec: str | None) -> dict[str, Any]:
    """What a store's manifest says about its place in the atlas (see ``repair``)."""
    return {"model_id": model_id, "spec": spec, "ids": asdict(ids)}


def publish(atlas_dir: AtlasDir, stores: list[tuple[str, Path, IdRange]], replace: bool) -> Catalog:
    """Publish finished stores (model_id, staging folder, reserved ids) in one catalog.

    The stores are flushed to disk first, without the lock: other writers wait only for the
    catalog to change."""
    for _, staging, _ in stores:
        fsync_tree(staging)
    with atlas_dir.writer_lock():
        refuse_existing(atlas_dir, [model_id for model_id, _, _ in stores], replace)
        catalog = atlas_dir.read_catalog()
        atlas_dir.sweep(catalog)
        atlas_dir.publish_many([(m, staging, ids.entry()) for m, staging, ids in stores], catalog)
    return catalog
