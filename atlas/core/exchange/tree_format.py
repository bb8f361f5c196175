"""The Parquet tree format: a hive-partitioned dataset that any engine reads directly.

::

    ROOT/_svd_atlas.json                                format name and version, vectors mode
    ROOT/<table>/model_id=<url-escaped id>/data_0.parquet
    ROOT/unembed/model_id=<url-escaped id>/unembed.npy  centered W_U, float16 (with vectors)

One partition per model and table of the storage contract; ``model_id`` lives in the folder name
(hive style), also for ``top_tokens``, ``top_neurons`` and ``token_bags``, which are partitioned
by their direction's model. ``directions.vector`` is a ``FLOAT[]`` list (Parquet has no
fixed-size list), or absent when the tree was written with ``--vectors none``. ROOT is a local
folder or an object-store URL (``s3://bucket/prefix``).

``unembed`` (the marker's ``models[id]["unembed"]`` says whether a model has it) turns words
into a residual-space query, as in the atlas the model came from; a model without one (a tree
written with ``--vectors none``) searches words in token space.

The marker names, for every model, whether it has an unembedding and the format version its
partitions were written in (``format_version``), and the tables the tree holds. A tree grows
model by model, so it can hold models written by an older svd-atlas: their partitions lack the
composition tables and the columns version 3 added, which a reader fills as an upgraded
atlas's models have them (``atlas.core.contents``: circuits refuse such a model with one line).
Older markers could leave all this out: :func:`upgrade_marker`, their one upgrade, says what
it was (version 2: the marker's version for each model, and no composition tables; version 1
also: no unembedding, every other table). It is applied as a tree is read, which never writes,
and exporting into an older tree writes its marker as the current version.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from atlas.core.contents import ADDED_TABLES
from atlas.core.errors import AtlasError, one_line
from atlas.core.formats import require_format
from atlas.core.jsondata import load_json

MARKER = "_svd_atlas.json"
FORMAT = "svd-atlas-parquet"
FORMAT_VERSION = 3
TOO_OLD = "export its models into a new tree (`export` with `parquet`)"
VECTOR_MODES = ("f32", "none")
# models exported from different atlases into one tree may share direction ids
SHARED_IDS_HINT = (
    "to share them together, load their bundles into one atlas (it gives each model its own "
    "ids) and export that"
)
PARTITION = "model_id"
DATA_FILE = "data_0.parquet"
UNEMBED_DIR, UNEMBED_FILE = "unembed", "unembed.npy"
# Tables whose rows carry no model_id in the contract: the partition column is not theirs.
PARTITIONED_BY_DIRECTION = ("top_tokens", "top_neurons", "token_bags")
# The client libraries of object stores behind fsspec; their errors are about the store.
STORE_CLIENTS = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google", "adlfs", "azure")
CREDENTIALS_HINT = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`",
}


def partition_dir(table: str, model_id: str) -> str:
    """``<table>/model_id=<escaped>``, relative to the tree's root."""
    return f"{table}/{PARTITION}={urllib.parse.quote(model_id, safe='')}"


def tree_filesystem(location: str) -> tuple[Any, str]:
    """The fsspec file system and root path of a tree's location (a folder or a URL)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise AtlasError(f"cannot open {location}: {one_line(exc)}") from None
    return fs, str(root).rstrip("/")


@contextmanager
def store_errors(location: str) -> Iterator[None]:
    """A failure of the object store's client library under ``location`` (no credentials,
    access denied, an endpoint that does not answer) as one line that says what to do."""
    try:
        yield
    except AtlasError:
        raise
    except Exception as exc:
        classes = type(exc).__mro__
        if not any(c.__module__.split(".")[0] in STORE_CLIENTS for c in classes):
            raise
        if any("Credential" in c.__name__ for c in classes):
            scheme = location.split("://", 1)[0]
            hint = CREDENTIALS_HINT.get(scheme, "configure credentials for it")
            raise AtlasError(
                f"cannot reach {location}: no credentials were found; {hint}"
            ) from None
        raise AtlasError(
            f"cannot reach {location}: {one_line(exc)} (check its address, credentials and "
            "permissions)"
        ) from None


def read_marker(fs: Any, root: str, location: str) -> dict[str, Any]:
    try:
        with fs.open(f"{root}/{MARKER}", "rb") as fh:
            info = load_json(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise AtlasError(f"{location} is not an svd-atlas Parquet tree (no {MARKER})") from None
    except (OSError, ValueError) as exc:
        raise AtlasError(f"cannot read {location}/{MARKER}: {one_line(exc)}") from None
    return check_marker(info, location)


def check_marker(info: Any, location: str) -> dict[str, Any]:
    """A tree's marker as the current version has it (an older version's upgraded), checked;
    anything else is one line naming ``location``."""
    from atlas.core.contract import TABLES

    version = require_format(info, FORMAT, FORMAT_VERSION, location, "Parquet tree", TOO_OLD)
    if version < FORMAT_VERSION:
        info = upgrade_marker(info, version)
    models, tables = info.get("models"), info.get("tables")
    if (
        info.get("vectors") not in VECTOR_MODES
        or not isinstance(models, dict)
        or not all(isinstance(m, dict) and isinstance(m.get("unembed"), bool)
                   and _version_of(m) is not None for m in models.values())
        or not isinstance(tables, list)
        or not set(tables) <= set(TABLES)
    ):  # fmt: skip
        raise AtlasError(f"{location}/{MARKER} is malformed: export into a new tree")
    return info


def _version_of(model: dict[str, Any]) -> int | None:
    version = model.get("format_version")
    ok = isinstance(version, int) and not isinstance(version, bool) and version <= FORMAT_VERSION
    return version if ok else None


def upgrade_marker(info: dict[str, Any], version: int) -> dict[str, Any]:
    """An older marker (of format ``version``) as the current version says it: its models'
    partitions are of that version; a model it does not say has an unembedding has none (trees
    kept them only late in version 1), and a tree that does not list its tables holds every
    table but those version 3 added."""
    from atlas.core.contract import TABLES

    models = info.get("models")
    if isinstance(models, dict):
        models = {
            m: {"unembed": False, "format_version": version, **entry}
            if isinstance(entry, dict) else entry
            for m, entry in models.items()
        }  # fmt: skip
    tables = [t for t in TABLES if t not in ADDED_TABLES]
    return {"tables": tables, **info, "models": models, "format_version": FORMAT_VERSION}


def model_has_table(model: dict[str, Any], table: str) -> bool:
    """Whether a model's entry in the marker says its partitions include ``table``."""
    return table not in ADDED_TABLES or model["format_version"] >= FORMAT_VERSION


def read_unembedding(fs: Any, root: str, model_id: str, shape: tuple[int, int]) -> Any:
    """A model's unembedding from the tree: plain float16 data of ``shape`` (d_vocab,
    d_model), finite; anything else is one line."""
    import io

    import numpy as np

    path = f"{root}/{partition_dir(UNEMBED_DIR, model_id)}/{UNEMBED_FILE}"
    where = f"model {model_id!r}: {partition_dir(UNEMBED_DIR, model_id)}/{UNEMBED_FILE}"
    try:
        with fs.open(path, "rb") as fh:
            unembed = np.load(io.BytesIO(fh.read()), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise AtlasError(f"{where} cannot be read ({one_line(exc, 160)})") from None
    if unembed.dtype != np.float16 or unembed.shape != shape:
        raise AtlasError(f"{where} has shape {unembed.shape} {unembed.dtype}, not {shape} float16")
    if not np.isfinite(unembed).all():
        raise AtlasError(f"{where} holds NaN or infinite values")
    return unembed
