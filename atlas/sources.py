"""What ``--atlas PATH`` / ``atlas.open(PATH)`` can name, and the read-only handle for each.

- an atlas directory (``catalog.json``): :class:`atlas.handle.Atlas`;
- a bundle file (``svd-atlas export -o FILE``): verified and loaded into a private temporary
  atlas that is deleted on close (:class:`BundleAtlas`); nothing is imported anywhere else;
- a hive-partitioned Parquet tree (``svd-atlas export --parquet DIR``): DuckDB views straight
  over its files (:class:`ParquetAtlas`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.parse
import weakref
from pathlib import Path
from typing import Any

import duckdb

from atlas.errors import AtlasError
from atlas.formats import require_format
from atlas.handle import Atlas, empty_table_ddl, no_vectors
from atlas.layout import dir_size
from atlas.schema import TABLES
from atlas.views import create_views

PARQUET_MARKER = "_svd_atlas.json"
PARQUET_FORMAT = "svd-atlas-parquet"
PARQUET_FORMAT_VERSION = 1
PARTITION = "model_id"


def open_atlas(path: str | os.PathLike[str]) -> Atlas:
    """The read-only handle for whatever ``path`` is (see the module notes)."""
    p = Path(path)
    if p.is_file():
        return BundleAtlas(p)
    if (p / PARQUET_MARKER).is_file():
        return ParquetAtlas(p)
    return Atlas(p)


class BundleAtlas(Atlas):
    """A bundle opened read-only: verified, then loaded into a private temporary atlas."""

    def __init__(self, bundle: Path):
        from query.exchange.load import load_bundle

        self.bundle = bundle
        self._tmp = Path(tempfile.mkdtemp(prefix="svd-atlas-open-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmp, ignore_errors=True)
        try:
            load_bundle(self._tmp / "atlas", bundle)
            super().__init__(self._tmp / "atlas")
        except BaseException:
            self._cleanup()
            raise

    @property
    def root(self) -> Path:
        return self.bundle

    def close(self) -> None:
        super().close()
        self._cleanup()


class ParquetAtlas(Atlas):
    """A Parquet tree written by ``export --parquet``, queried in place through DuckDB views."""

    def __init__(self, root: str | os.PathLike[str]):
        self._root = Path(root)
        self.info = read_parquet_marker(self._root)
        self.con = duckdb.connect(":memory:")
        for table in TABLES:
            self.con.execute(self._view(table))
        create_views(self.con)

    def _view(self, table: str) -> str:
        if not any((self._root / table).glob(f"{PARTITION}=*/*.parquet")):
            return empty_table_ddl(table)
        glob = str(self._root / table / f"{PARTITION}=*" / "*.parquet").replace("'", "''")
        source = (
            f"read_parquet('{glob}', hive_partitioning = true, "
            f"hive_types = {{'{PARTITION}': VARCHAR}})"
        )
        select = "*"
        if table == "directions":
            select = (
                "* REPLACE (vector::FLOAT[] AS vector)"
                if self.info["vectors"] != "none"
                else "*, NULL::FLOAT[] AS vector"
            )
        elif table in ("top_tokens", "top_neurons", "token_bags"):
            select = f"* EXCLUDE ({PARTITION})"  # partitioned by model, but not a contract column
        return f"CREATE TEMP VIEW {table} AS SELECT {select} FROM {source}"

    @property
    def root(self) -> Path:
        return self._root

    def model_ids(self) -> list[str]:
        return list(self.info["models"])

    def store_path(self, model_id: str) -> Path:
        raise AtlasError(
            f"{self._root} is a Parquet tree: it answers sql; search, trace and cards need an "
            "atlas directory or a bundle"
        )

    def alias(self, model_id: str) -> str:
        self.store_path(model_id)
        return ""

    def model_of(self, direction_id: int) -> str:
        return self.alias("")

    def index_path(self, model_id: str) -> Path:
        raise AtlasError(f"{self._root} is a Parquet tree: it holds no FAISS files")

    def residual_index(self, model_id: str) -> Any:
        """An exact index built in memory from the tree's vectors."""
        from atlas.indexes import EXACT, build_index

        if model_id not in self.info["models"]:
            raise AtlasError(f"no model {model_id!r} in {self._root}")
        if self.info["vectors"] == "none":
            raise no_vectors(model_id)
        rows = self.sql(
            "SELECT direction_id, vector FROM directions WHERE model_id = ? ORDER BY direction_id",
            [model_id],
        )
        d = int(self.info["models"][model_id]["d_model"])
        vectors = rows["vector"].combine_chunks().flatten().to_numpy().reshape(-1, d)
        return build_index(vectors, rows["direction_id"].to_numpy(), EXACT)

    def model_sizes(self) -> dict[str, int]:
        sizes = dict.fromkeys(self.model_ids(), 0)
        for part in self._root.glob(f"*/{PARTITION}=*"):
            model_id = urllib.parse.unquote(part.name.split("=", 1)[1])
            if model_id in sizes:
                sizes[model_id] += dir_size(part)
        return sizes


def read_parquet_marker(root: Path) -> dict[str, Any]:
    path = root / PARQUET_MARKER
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AtlasError(f"cannot read {path}: {exc}") from None
    require_format(info, PARQUET_FORMAT, PARQUET_FORMAT_VERSION, root, "Parquet tree")
    return info
