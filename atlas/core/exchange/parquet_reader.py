"""Reading a Parquet tree (``export --parquet``) in place: a local folder or an object store.

DuckDB reads the tree's files through a read-only file system rooted at the tree
(``atlas.core.rofs``), the only place the locked session may open. The tree has no FAISS files:
a model's residual index, where the tree has vectors, is built in memory from them (exact).
Words become residual queries through the model's unembedding where the tree keeps it (a tree
written with ``--vectors none`` has none: words are searched in token space there). Opening a
tree checks its values (``atlas.core.value_checks``): a tree is data from elsewhere, with no
checksums to trust.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from atlas.core.contents import added_columns_sql
from atlas.core.contract import TABLES
from atlas.core.errors import AtlasError, NotFound
from atlas.core.exchange.tree_format import (
    DATA_FILE,
    FORMAT_VERSION,
    PARTITION,
    PARTITIONED_BY_DIRECTION,
    SHARED_IDS_HINT,
    model_has_table,
    partition_dir,
    read_marker,
    read_unembedding,
    store_errors,
    tree_filesystem,
)
from atlas.core.model_ids import left_out
from atlas.core.reader import Reader, check_direction_id, no_vectors
from atlas.core.rofs import PROTOCOL, ReadOnlyRoot
from atlas.core.sqlguard import engine_message, raise_interrupt, sql_string
from atlas.core.value_checks import UNIT_TOLERANCE, value_problems
from atlas.core.vectors import numbers, vector_matrix


class ParquetReader(Reader):
    """A Parquet tree; see the module notes."""

    def __init__(self, location: str, memory_limit: int | str | None = None, validate: bool = True):
        super().__init__(location, memory_limit)
        self._fs, self._root = tree_filesystem(location)  # for the files' sizes
        # every file of the tree is read through it, the marker and unembeddings included:
        # inside the tree only, and on a local disk no link out of it
        self._tree = ReadOnlyRoot(self._fs, self._root)
        with store_errors(location):
            self.info = read_marker(self._tree, "", location)
        self._con.register_filesystem(self._tree)
        self._con.execute(f"SET allowed_directories = ['{PROTOCOL}://']")
        # The marker is written after a model's files: the models it names are complete.
        named = sorted(self.info["models"])
        self.damaged = {m: why for m in named if (why := left_out(m))}
        self._models = [m for m in named if m not in self.damaged]
        self._ranges: dict[str, tuple[int, int]] | None = None
        tables = [t for t in TABLES if t in self.info["tables"]]
        self._unembeddings: dict[str, np.ndarray] = {}
        try:
            self._finish_open({t: self._parts(t, self._models) for t in tables})
        except duckdb.Error as exc:  # a file the views read cannot be opened
            raise_interrupt(exc)
            why = engine_message(exc)
            raise AtlasError(f"cannot read the Parquet tree {location}: {why}") from None
        if validate:
            self.validate()

    def _parts(self, table: str, model_ids: list[str]) -> list[str]:
        """SQL relations reading ``model_ids``' partitions of one table: one per format version
        their partitions were written in (an older one's lacks the composition tables, and
        its rows get the columns version 3 added as an upgraded model has them)."""
        by_version: dict[int, list[str]] = {}
        for model_id in model_ids:
            entry = self.info["models"][model_id]
            if model_has_table(entry, table):
                by_version.setdefault(entry["format_version"], []).append(model_id)
        return [self._scan(table, ms, v) for v, ms in sorted(by_version.items())]

    def _scan(self, table: str, model_ids: list[str], version: int) -> str:
        """SQL reading the files of some models' partitions of one table, written in format
        ``version``."""
        files = ", ".join(
            sql_string(f"{PROTOCOL}://{partition_dir(table, m)}/{DATA_FILE}") for m in model_ids
        )
        source = (
            f"read_parquet([{files}], hive_partitioning = true, "
            f"hive_types = {{'{PARTITION}': VARCHAR}})"
        )
        columns = "*"
        if table in PARTITIONED_BY_DIRECTION:
            columns = f"* EXCLUDE ({PARTITION})"
        if version < FORMAT_VERSION:
            columns += added_columns_sql(table, version)
        elif table == "directions":
            columns = (
                "* REPLACE (vector::FLOAT[] AS vector)"
                if self.info["vectors"] != "none"
                else "*, NULL::FLOAT[] AS vector"
            )
        return f"(SELECT {columns} FROM {source})"

    def model_ids(self) -> list[str]:
        return list(self._models)

    def relation(self, model_id: str, table: str) -> str:
        self.require_model(model_id)
        parts = self._parts(table, [model_id])
        return parts[0] if parts else f"(SELECT * FROM {table} LIMIT 0)"

    def model_of(self, direction_id: int) -> str:
        direction_id = check_direction_id(direction_id)
        if self._ranges is None:
            rows = self.sql(
                "SELECT model_id, min(direction_id) AS lo, max(direction_id) AS hi "
                "FROM directions GROUP BY model_id"
            ).to_pylist()
            self._ranges = {r["model_id"]: (r["lo"], r["hi"]) for r in rows}
        owners = [m for m, (lo, hi) in self._ranges.items() if lo <= direction_id <= hi]
        if len(owners) > 1:  # models exported from different atlases may share ids
            raise AtlasError(
                f"direction {direction_id} is ambiguous in {self.location}: the id ranges of "
                f"{', '.join(sorted(owners))} overlap, as ids are unique only within the atlas a "
                f"model was exported from; {SHARED_IDS_HINT}"
            )
        if not owners:
            raise NotFound(f"no direction {direction_id} in {self.location}")
        return owners[0]

    def _read_index(self, model_id: str) -> tuple[Any, int]:
        """An exact index built in memory from the tree's vectors."""
        from atlas.core.indexes import EXACT, ResidualIndex, build_index

        if self.info["vectors"] == "none":
            raise no_vectors(model_id)
        rows = self.sql(
            f"SELECT direction_id, vector FROM {self.relation(model_id, 'directions')} "
            "ORDER BY direction_id"
        )
        try:
            ids = numbers(rows["direction_id"]).astype(np.int64)
            vectors = vector_matrix(rows["vector"])
        except ValueError:  # numbers with nulls
            raise AtlasError(
                f"{self.location}: model {model_id!r}: its directions hold a NULL id or "
                "vector value"
            ) from None
        norms = np.linalg.norm(vectors, axis=1)
        off = ~(np.abs(norms - 1) <= UNIT_TOLERANCE)  # NaN and infinities too
        if off.any():
            first = int(np.argmax(off))
            raise AtlasError(
                f"{self.location}: model {model_id!r}: direction {ids[first]}: its vector has "
                f"norm {norms[first]:.6g}, not a finite unit length"
            )
        return ResidualIndex([build_index(vectors, ids, EXACT)]), vectors.nbytes

    def _read_verified_index(self, model_id: str) -> tuple[Any, int]:
        """Nothing to compare: the index is built from the tree's own vectors (comparing would
        read a tree on object storage twice)."""
        return self._read_index(model_id)

    def stored_vectors(self, model_id: str, ids: np.ndarray) -> np.ndarray:
        """The index is built from the tree's own vectors: its copy is theirs (no second read
        of the tree per search)."""
        index = self.residual_index(model_id)
        try:
            return np.asarray(index.reconstruct_batch(np.asarray(ids, np.int64)))
        except KeyError:
            raise AtlasError(f"model {model_id!r}: a direction id is not in the tree") from None

    def index_bytes(self, model_id: str) -> int:
        if self.info["vectors"] == "none":
            return 0
        row = self.sql(
            f"SELECT n_directions, d_model FROM {self.relation(model_id, 'models')}"
        ).to_pylist()[0]
        return int(row["n_directions"]) * int(row["d_model"]) * 4

    def has_exact_index(self, model_id: str) -> bool:
        return True  # built in memory, exact

    def has_unembedding(self, model_id: str) -> bool:
        self.require_model(model_id)
        return bool(self.info["models"][model_id]["unembed"])

    def unembedding(self, model_id: str) -> np.ndarray:
        """Read whole (a tree may be remote: no memory map), checked, and kept."""
        with self._lock:
            kept = self._unembeddings.get(model_id)
        if kept is not None:
            return kept
        if not self.has_unembedding(model_id):
            raise AtlasError(
                f"{self.location}: model {model_id!r} has no unembedding in this tree, so words "
                "are searched in token space"
            )
        unembed = read_unembedding(self._tree, "", model_id, self._shape(model_id))
        with self._lock:
            return self._unembeddings.setdefault(model_id, unembed)

    def keep_unembedding(self, model_id: str) -> None:
        self.unembedding(model_id)

    def _shape(self, model_id: str) -> tuple[int, int]:
        row = self.sql(
            f"SELECT d_vocab, d_model FROM {self.relation(model_id, 'models')}"
        ).to_pylist()[0]
        return int(row["d_vocab"]), int(row["d_model"])

    def validate(self) -> None:
        """Every model's values (``atlas.core.value_checks``): sigma, top-token order, and on
        a sample, vectors and top-token scores; the first problem is one line. All vectors
        are checked when a model's index is built from them."""
        for model_id in self._models:
            problems = self.value_problems(model_id, vectors="sample")
            if problems:
                raise AtlasError(f"{self.location}: {problems[0]}")

    def value_problems(self, model_id: str, vectors: str) -> list[str]:
        unembed = self.unembedding(model_id) if self.has_unembedding(model_id) else None
        return value_problems(
            lambda q, p: self.sql(q, p),
            model_id,
            self.relation(model_id, "models"),
            self.relation(model_id, "directions"),
            self.relation(model_id, "top_tokens"),
            unembed,
            vectors if self.info["vectors"] != "none" else "none",
        )

    def close(self) -> None:
        super().close()
        self._unembeddings.clear()

    def model_sizes(self, model_ids: list[str] | None = None) -> dict[str, int]:
        sizes = dict.fromkeys(model_ids or self.model_ids(), 0)
        for table in TABLES:
            for model_id in sizes:
                path = f"{self._root}/{partition_dir(table, model_id)}"
                if self._fs.exists(path):
                    sizes[model_id] += int(self._fs.du(path))
        return sizes
