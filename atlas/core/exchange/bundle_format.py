"""The bundle format: an uncompressed tar whose first member is a manifest.

::

    manifest.json                  format, version, vectors mode, models, sha256 + size of members
    models/0000/models.parquet     one folder per model: each table of the storage contract
    models/0000/matrices.parquet
    models/0000/directions.parquet vector: FLOAT[] (f32), HALF_FLOAT[] (f16), or no column (none)
    models/0000/top_tokens.parquet
    models/0000/top_neurons.parquet
    models/0000/vocab.parquet
    models/0000/unembed.npy        centered W_U as float16 (turns words into queries); not with
                                   --vectors none, where no residual-space search is possible

Every table has every column of the contract. No index is bundled: load builds it from the
verified vectors.

Older versions are read through one upgrade (:func:`upgrade_manifest`, :func:`upgrade_table`),
applied as the bundle is read: a bundle is never written in place. Version 2 has no
composition tables and lacks the columns version 3 added; its models are upgraded as an
atlas's are (``atlas.core.contents``: they keep ``models.format_version`` 2, and circuits
refuse them). Version 1 could also lack ``models.weight_dtype`` and could hold a FAISS index
per model (``models/0000/residual.faiss``, ``has_index`` in the manifest) that nothing read.

A bundle is data, never code: nothing in it is unpickled or executed. Member names are fixed by
this module (never derived from model ids), so a reader accepts only names it would have
written, and checks every member against the manifest before anything uses it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from atlas.core.contents import ADDED_TABLES, added_values
from atlas.core.errors import AtlasError, one_line
from atlas.core.formats import require_format
from atlas.core.model_ids import RULE, model_id_problem
from atlas.core.store import TABLE_ORDER

FORMAT = "svd-atlas-bundle"
FORMAT_VERSION = 3
TOO_OLD = "export it again with the svd-atlas that made it, into a newer one, or re-ingest"
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
VECTOR_MODES = ("f32", "f16", "none")
UNEMBED_FILE = "unembed.npy"
_MEMBER = re.compile(r"models/\d{4}/(?:(?:" + "|".join(TABLE_ORDER) + r")\.parquet|unembed\.npy)")
_V1_INDEX = re.compile(r"models/\d{4}/residual\.faiss")  # version 1's unread index files
_SHA256 = re.compile(r"[0-9a-f]{64}")


def model_dir(position: int) -> str:
    return f"models/{position:04d}"


def table_member(position: int, table: str) -> str:
    return f"{model_dir(position)}/{table}.parquet"


def unembed_member(position: int) -> str:
    return f"{model_dir(position)}/{UNEMBED_FILE}"


def is_known_member(name: str) -> bool:
    return name == MANIFEST_NAME or _MEMBER.fullmatch(name) is not None


@dataclass
class Member:
    bytes: int
    sha256: str


@dataclass
class BundleModel:
    """One model in a bundle, as the manifest describes it."""

    model_id: str
    position: int
    d_model: int
    architecture: str
    source: str
    processing: str
    counts: dict[str, int]
    first_direction_id: int
    n_directions: int
    first_matrix_id: int
    n_matrices: int
    has_unembed: bool
    ingest_versions: dict[str, str]

    def members(self, tables: tuple[str, ...] = TABLE_ORDER) -> list[str]:
        names = [table_member(self.position, t) for t in tables]
        return names + ([unembed_member(self.position)] if self.has_unembed else [])


@dataclass
class BundleManifest:
    vectors: str
    svd_atlas_version: str
    created_at: str
    library_versions: dict[str, str]
    models: list[BundleModel]
    members: dict[str, Member] = field(default_factory=dict)
    # the version it was read in (an older one's tables go through ``upgrade_table``), and
    # the members of a version 1 bundle that are not read (``upgrade_manifest``); neither is
    # written
    read_version: int = FORMAT_VERSION
    unread: dict[str, Member] = field(default_factory=dict)

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables each model of the bundle has (older versions lack some)."""
        return tables_of(self.read_version)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["read_version"], data["unread"]
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: Any, source: str) -> BundleManifest:
        """Parse and check a manifest (of an older version, upgraded); anything unexpected
        is a refusal naming ``source``."""
        version = require_format(data, FORMAT, FORMAT_VERSION, source, "bundle", TOO_OLD)
        unread: dict[str, Any] = {}
        if version < FORMAT_VERSION:
            data, unread = upgrade_manifest(data, source)
        try:
            manifest = cls(
                vectors=data["vectors"],
                svd_atlas_version=str(data["svd_atlas_version"]),
                created_at=str(data["created_at"]),
                library_versions=dict(data["library_versions"]),
                models=[BundleModel(**m) for m in data["models"]],
                members={k: Member(**v) for k, v in data["members"].items()},
                read_version=version,
                unread={k: Member(**v) for k, v in unread.items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise AtlasError(f"{source} has a malformed bundle manifest: {one_line(exc)}") from None
        manifest._check(source)
        return manifest

    def _check(self, source: str) -> None:
        def bad(why: str) -> AtlasError:
            return AtlasError(f"{source} has a malformed bundle manifest: {why}")

        if self.vectors not in VECTOR_MODES:
            raise bad(f"vectors {self.vectors!r} is not one of {', '.join(VECTOR_MODES)}")
        expected: list[str] = []
        ids = [m.model_id for m in self.models]
        if len(set(ids)) != len(ids):
            raise bad("a model_id appears twice")
        for position, m in enumerate(self.models):
            if m.position != position or not isinstance(m.model_id, str) or not m.model_id:
                raise bad(f"model entry {position} is inconsistent")
            if problem := model_id_problem(m.model_id):
                raise AtlasError(
                    f"{source}: model id {m.model_id!r} is not allowed ({problem}); nothing "
                    f"was loaded ({RULE})"
                )
            if not isinstance(m.d_model, int) or m.d_model <= 0:
                raise bad(f"model {m.model_id!r} has d_model {m.d_model!r}")
            expected += m.members(self.tables)
        for name, member in {**self.members, **self.unread}.items():
            if not isinstance(member.bytes, int) or member.bytes < 0:
                raise bad(f"member {name!r} has size {member.bytes!r}")
            if not isinstance(member.sha256, str) or not _SHA256.fullmatch(member.sha256):
                raise bad(f"member {name!r} has no valid sha256")
        if sorted(expected) != sorted(self.members):
            raise bad("its member list does not match its models")


def tables_of(version: int) -> tuple[str, ...]:
    """The tables each model of a bundle of format ``version`` has."""
    if version < FORMAT_VERSION:
        return tuple(t for t in TABLE_ORDER if t not in ADDED_TABLES)
    return TABLE_ORDER


def upgrade_manifest(data: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An older manifest as the current version says it, and the members it lists that are not
    read (a version 1 bundle's index files: the tar holds them, and they are verified but not
    copied)."""
    try:
        members = dict(data["members"])
        unread = {name: members.pop(name) for name in list(members) if _V1_INDEX.fullmatch(name)}
        models = [{k: v for k, v in m.items() if k != "has_index"} for m in data["models"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise AtlasError(f"{source} has a malformed bundle manifest: {one_line(exc)}") from None
    return {**data, "format_version": FORMAT_VERSION, "members": members, "models": models}, unread


ARROW_TYPES = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "DOUBLE": pa.float64()}


def upgrade_table(name: str, table: pa.Table, columns: list[str], version: int) -> pa.Table:
    """An older bundle's table (of format ``version``) as the current version has it:
    ``models.weight_dtype`` (added to the contract during version 1, so older bundles lack it)
    is NULL where missing, and the columns version 3 added are as an upgraded model has them
    (``atlas.core.contents``)."""
    added = {"weight_dtype": ("VARCHAR", None)} if name == "models" else {}
    added |= added_values(name, version)
    for column, (sql_type, value) in added.items():
        if column not in table.column_names:
            values = pa.array([value] * table.num_rows, ARROW_TYPES[sql_type])
            table = table.append_column(column, values)
    return table.select([c for c in columns if c in table.column_names])
