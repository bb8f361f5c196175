"""The integrity check of an atlas directory (``svd-atlas check``).

For every model the catalog names it verifies, without writing anything: the store exists, its
files match the manifest's checksums, the DuckDB tables agree with each other, with the manifest
and with the catalog's id ranges, the FAISS index holds exactly the model's direction ids with
the same vectors as DuckDB, and the unembedding has the model's shape. Unreferenced stores and
staging leftovers are reported as information: they are what a crash leaves and the next ingest
sweeps.

An atlas of an older format version is one problem, which ``check --repair`` fixes by
upgrading it (``atlas.core.upgrade``); its models are checked once it is upgraded.

Each problem says what fixes it. ``check --repair`` (``atlas.core.repair``) fixes what it can
without the model: an index is rebuilt from DuckDB, a lost manifest recomputed from verified
data, a lost catalog rebuilt from the stores' manifests, and a model whose data cannot be read
is taken out of the catalog (its ids stay retired) so that the rest of the atlas is whole again.
Damage only the model can fix (an altered unembedding, inconsistent tables) says to re-ingest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from atlas.core.contents import CONTENTS_VERSION
from atlas.core.contract import EMBED_SIDES
from atlas.core.errors import AtlasError, PreviousFormat, UnsupportedFormat, one_line
from atlas.core.hit_rows import HIT_FILES, HIT_ROWS, hit_rows_problem
from atlas.core.indexes import (
    APPROXIMATE_MIN,
    EXACT,
    ResidualIndex,
    UnreadableShard,
    is_exact,
    is_index_file,
    measured_recall,
    read_index,
    shard_files,
)
from atlas.core.jsondata import load_json
from atlas.core.layout import (
    CATALOG,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_DB,
    UNEMBED,
    AtlasDir,
    Catalog,
    CatalogEntry,
)
from atlas.core.reader import store_problem
from atlas.core.sqlguard import raise_interrupt, sql_string
from atlas.core.store import sha256_file
from atlas.core.value_checks import value_problems
from atlas.core.vectors import BadValues, numbers, python_rows, vector_matrix

REINGEST = "re-ingest the model (`ingest` with `replace`) or load its bundle again"
# What ``check --repair`` does about a problem (``Finding.repair``).
REBUILD_INDEX, REBUILD_HITS, REWRITE_MANIFEST, REBUILD_CATALOG, UNPUBLISH, UPGRADE = (
    "index",
    "hits",
    "manifest",
    "catalog",
    "unpublish",
    "upgrade",
)
RAISE_COUNTERS = "counters"
REPAIR_SAYS = {
    UPGRADE: f"a repair (`check` with `repair`) upgrades it to version {FORMAT_VERSION}",
    REBUILD_INDEX: "a repair (`check` with `repair`) rebuilds it from DuckDB",
    REBUILD_HITS: "a repair (`check` with `repair`) writes it again from DuckDB",
    REWRITE_MANIFEST: "a repair (`check` with `repair`) recomputes it once the data is verified",
    REBUILD_CATALOG: "a repair (`check` with `repair`) rebuilds it from the stores' manifests",
    RAISE_COUNTERS: "a repair (`check` with `repair`) raises it past every id on disk, so that "
    "no id is handed out twice",
    UNPUBLISH: "a repair (`check` with `repair`) takes the model out of the catalog so the rest "
    "of the atlas is whole; re-ingest it (`ingest` with `replace`) to get it back",
}
UNIT_TOLERANCE = 1e-3  # float32 vectors, or float16 ones renormalised on load
VECTOR_TOLERANCE = 1e-5
RECALL_QUERIES = 200  # own directions searched to measure an approximate index's recall
VECTOR_CHUNK = 65_536


@dataclass
class Finding:
    """One problem (``error``) or one harmless observation (``info``); ``repair`` names what
    ``check --repair`` would do about it (None: only re-ingesting fixes it)."""

    level: str
    model_id: str | None
    message: str
    fix: str | None = None
    repair: str | None = None

    @property
    def repairable(self) -> bool:
        return self.repair is not None

    def line(self) -> str:
        where = self.model_id if self.model_id is not None else "-"
        fix = f" ({self.fix})" if self.fix else ""
        return f"{self.level:<5}  {where}  {self.message}{fix}"


@dataclass
class CheckReport:
    root: Path | str  # an atlas directory, or a Parquet tree's location (perhaps a URL)
    models: int = 0
    directions: int = 0
    findings: list[Finding] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "atlas": str(self.root),
            "ok": self.ok,
            "models": self.models,
            "directions": self.directions,
            "problems": [{**asdict(f), "repairable": f.repairable} for f in self.errors],
            "info": [asdict(f) for f in self.findings if f.level == "info"],
            "repaired": self.repaired,
        }


def check_atlas(root: str | Path) -> CheckReport:
    """Check every published model of the atlas at ``root``; see the module notes."""
    atlas_dir = AtlasDir(root)
    if Path(root).is_file():
        raise AtlasError(
            f"{root} is a file: check works on an atlas directory (a bundle is verified by "
            "svd-atlas load)"
        )
    try:
        atlas_dir.require_atlas()
        catalog = atlas_dir.read_catalog()
    except PreviousFormat:
        previous = atlas_dir.read_catalog(upgrading=True)
        report = CheckReport(root=atlas_dir.root, models=len(previous.models))
        report.directions = sum(e.n_directions for e in previous.models.values())
        message = (
            f"{CATALOG}: atlas format version {previous.version}, made by an earlier svd-atlas; "
            f"this one reads and writes version {FORMAT_VERSION}"
        )
        report.findings.append(Finding("error", None, message, REPAIR_SAYS[UPGRADE], UPGRADE))
        return report
    except AtlasError as exc:
        # a catalog of a version this svd-atlas cannot read is not lost: never rebuilt here
        if isinstance(exc, UnsupportedFormat) or not atlas_dir.orphan_stores():
            raise
        report = CheckReport(root=atlas_dir.root)
        message = str(exc).split(";")[0]
        fix = REPAIR_SAYS[REBUILD_CATALOG]
        report.findings.append(Finding("error", None, message, fix, REBUILD_CATALOG))
        return report
    report = CheckReport(root=atlas_dir.root, models=len(catalog.models))
    for model_id, entry in catalog.models.items():
        report.directions += entry.n_directions
        report.findings += ModelCheck(atlas_dir, model_id, entry).run()
    report.findings += _catalog_findings(atlas_dir, catalog)
    return report


def _catalog_findings(atlas_dir: AtlasDir, catalog: Catalog) -> list[Finding]:
    """Overlapping id ranges and counters (errors), leftovers of interrupted writers (info)."""
    found = []
    entries = list(catalog.models.values())
    for counter, below in (
        ("next_direction_id",
         any(e.first_direction_id + e.n_directions > catalog.next_direction_id for e in entries)),
        ("next_matrix_id",
         any(e.first_matrix_id + e.n_matrices > catalog.next_matrix_id for e in entries)),
    ):  # fmt: skip
        if below:
            message = f"{CATALOG}: {counter} is below an id in use"
            found.append(Finding("error", None, message, REPAIR_SAYS[RAISE_COUNTERS],
                                 RAISE_COUNTERS))  # fmt: skip
    stores: dict[str, list[str]] = {}
    for model_id, e in catalog.models.items():
        stores.setdefault(e.store, []).append(model_id)
    for shared, named in stores.items():
        if len(named) > 1:  # an edited catalog: the stores know their own model
            message = f"{CATALOG}: models {', '.join(map(repr, named))} name one store, {shared}"
            found.append(Finding("error", None, message, REPAIR_SAYS[REBUILD_CATALOG],
                                 REBUILD_CATALOG))  # fmt: skip
    ranges = sorted((e.first_direction_id, e.n_directions, e.store) for e in entries)
    for (lo, n, one), (next_lo, _, other) in zip(ranges, ranges[1:], strict=False):
        if n and lo + n > next_lo and one != other:
            found.append(Finding("error", None, f"direction ids of {one} and {other} overlap"))
    referenced = {e.store for e in entries}
    for store in sorted((atlas_dir.root / "store").glob("*")):
        if f"store/{store.name}" not in referenced:
            found.append(
                Finding(
                    "info",
                    None,
                    f"unreferenced store store/{store.name} (a replaced model or an interrupted "
                    "publish; swept by a later ingest)",
                )
            )
    leftovers = [*(atlas_dir.root / ".staging").glob("*"), *atlas_dir.root.glob(f".{CATALOG}.*")]
    for path in sorted(leftovers):
        found.append(
            Finding(
                "info",
                None,
                f"leftover {path.relative_to(atlas_dir.root)} (an interrupted or running writer; "
                "swept by the next ingest)",
            )
        )
    return found


class ModelCheck:
    """The checks of one published model's store."""

    def __init__(self, atlas_dir: AtlasDir, model_id: str, entry: CatalogEntry):
        self.model_id, self.entry = model_id, entry
        self.store = atlas_dir.store_path(entry)
        self.findings: list[Finding] = []
        self.manifest: dict[str, Any] = {}

    def error(self, message: str, repair: str | None = None) -> None:
        fix = REPAIR_SAYS[repair] if repair else REINGEST
        self.findings.append(Finding("error", self.model_id, message, fix, repair))

    def index_error(self, message: str) -> None:
        self.error(f"the FAISS index: {message}", REBUILD_INDEX)

    def run(self) -> list[Finding]:
        if not self.store.is_dir():
            self.error(f"its store {self.entry.store} is missing", UNPUBLISH)
            return self.findings
        self._check_manifest()
        try:
            con = duckdb.connect(":memory:")
        except duckdb.Error as exc:  # pragma: no cover - an in-memory database always opens
            raise AtlasError(str(exc)) from None
        try:
            con.execute(f"ATTACH {sql_string(str(self.store / MODEL_DB))} AS m (READ_ONLY)")
            con.execute("USE m")
            model = self._check_tables(con)
            if model is not None:
                self._check_vectors(con, model)
                unembed = self._check_unembedding(model)
                self._check_values(con, unembed)
        except duckdb.Error as exc:
            raise_interrupt(exc)
            self.error(f"{MODEL_DB} cannot be read: {one_line(exc)}", UNPUBLISH)
            model = None
        finally:
            con.close()
        if model is not None:
            self._check_hit_rows()
        return self.findings

    def _check_hit_rows(self) -> None:
        """The hit rows are what the tables say, in full (``atlas.core.hit_rows``)."""
        absent = [n for n in HIT_FILES if not (self.store / n).is_file()]
        if absent:
            listed = self.manifest.get("members", {})
            if any(n not in listed for n in absent):  # else reported as missing already
                self.error(f"{absent[0]} is missing", REBUILD_HITS)
            return
        if problem := hit_rows_problem(self.store, self.store / MODEL_DB):
            self.error(f"{HIT_ROWS} {problem}", REBUILD_HITS)

    def _check_manifest(self) -> None:
        try:
            self.manifest = load_json((self.store / MANIFEST).read_text(encoding="utf-8"))
            members = self.manifest["members"]
            for name, member in members.items():
                int(member["bytes"]), str(member["sha256"])
                if not _is_file_name(name):  # never a path: check reads no file outside
                    raise ValueError(f"it lists {name!r}, which is not a file name")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.error(f"{MANIFEST} cannot be read ({one_line(exc, 200)})", REWRITE_MANIFEST)
            self.manifest = {}
            return
        for name, member in members.items():
            path = self.store / name
            repair = _derived(name)
            if not path.is_file():
                self.error(f"{name} is missing", repair)
            elif path.stat().st_size != member["bytes"] or sha256_file(path) != member["sha256"]:
                self.error(f"{name} does not match its manifest checksum", repair)
        for path in sorted(self.store.iterdir()):
            if path.name not in members and path.name != MANIFEST:
                self.error(f"{path.name} is not in the manifest", _derived(path.name))

    def _check_tables(self, con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
        problem = store_problem(con, "m", self.model_id)
        if problem:
            self.error(f"{MODEL_DB} {problem}", UNPUBLISH)
            return None
        try:
            (model,) = python_rows(con.sql("SELECT * FROM models").to_arrow_table())
        except BadValues as exc:
            self.error(f"models: {exc}", UNPUBLISH)
            return None
        e = self.entry
        counts = {t: _count(con, t) for t in ("matrices", "directions", "top_tokens")}
        counts |= {t: _count(con, t) for t in ("top_neurons", "vocab", "token_bags")}
        for table, expected in self.manifest.get("counts", {}).items():
            if table in counts and counts[table] != expected:
                self.error(f"{table} has {counts[table]} rows, its manifest says {expected}")
        for table, n in (("directions", e.n_directions), ("matrices", e.n_matrices)):
            if counts[table] != n or model[f"n_{table}"] != n:
                self.error(
                    f"{table} has {counts[table]} rows, models.n_{table} {model[f'n_{table}']}, "
                    f"the catalog {n}"
                )
        self._check_ids(con, "directions", "direction_id", e.first_direction_id, e.n_directions)
        self._check_ids(con, "matrices", "matrix_id", e.first_matrix_id, e.n_matrices)
        self._check_refs(con, "directions", "matrix_id", "matrices")
        for table in ("top_tokens", "top_neurons", "token_bags"):
            self._check_refs(con, table, "direction_id", "directions")
        per_direction = 2 * min(int(model["top_k"]), int(model["d_vocab"]))
        # through W_U for every direction; through W_E too for read sides (from format 3 on)
        embedded = int(model["format_version"] or 1) >= CONTENTS_VERSION
        wrong = _one(
            con,
            "SELECT count(*) FROM directions d LEFT JOIN "
            "(SELECT direction_id, count(*) FILTER (WHERE basis = 'unembed') AS u, "
            "count(*) FILTER (WHERE basis = 'embed') AS e, count(*) AS n FROM top_tokens "
            "GROUP BY ALL) t USING (direction_id) WHERE coalesce(t.u, 0) <> ? OR coalesce(t.e, 0) "
            "<> CASE WHEN ? AND list_contains(?, d.side) THEN ? ELSE 0 END "
            "OR coalesce(t.n, 0) <> coalesce(t.u, 0) + coalesce(t.e, 0)",
            [per_direction, embedded, list(EMBED_SIDES), per_direction],
        )
        if wrong[0]:
            self.error(
                f"{wrong[0]} directions do not have {per_direction} top_tokens rows per basis"
            )
        return model

    def _check_ids(
        self, con: duckdb.DuckDBPyConnection, table: str, column: str, first: int, n: int
    ) -> None:
        lo, hi, distinct = _one(
            con, f"SELECT min({column}), max({column}), count(DISTINCT {column}) FROM {table}"
        )
        if n and (lo, hi, distinct) != (first, first + n - 1, n):
            self.error(
                f"{table}.{column} spans {lo}..{hi} ({distinct} distinct); the catalog says "
                f"{first}..{first + n - 1}"
            )

    def _check_refs(
        self, con: duckdb.DuckDBPyConnection, table: str, column: str, parent: str
    ) -> None:
        dangling = _one(
            con,
            f"SELECT count(*) FROM {table} WHERE {column} NOT IN (SELECT {column} FROM {parent})",
        )
        if dangling[0]:
            self.error(f"{dangling[0]} {table} rows name a {column} that is not in {parent}")

    def _check_vectors(self, con: duckdb.DuckDBPyConnection, model: dict[str, Any]) -> None:
        """Unit norms in DuckDB, and the FAISS index equal to them (ids and vectors)."""
        (n_null,) = _one(con, "SELECT count(*) FROM directions WHERE vector IS NULL")
        has_vectors = not n_null
        if not has_vectors:
            if self.manifest.get("vectors") != "none":
                self.error(f"{n_null} directions have no vector")
            elif shard_files(self.store):
                self.index_error("present although the model has no vectors")
            return  # loaded from a bundle exported with --vectors none: no index by design
        (n_holed,) = _one(
            con, "SELECT count(*) FROM directions WHERE list_count(vector) < len(vector)"
        )
        if n_holed:
            self.error(f"{n_holed} direction vectors hold NULL values")
            return
        index = self._read_index(int(model["d_model"]), str(model["index_type"]))
        seen = np.zeros(0, np.int64)
        bad_norm = mismatched = 0
        for ids, vectors in _vector_chunks(con, int(model["d_model"])):
            # a NaN fails every comparison: count what is not within the tolerance
            norms = np.linalg.norm(vectors, axis=1)
            bad_norm += int(np.sum(~(np.abs(norms - 1) <= UNIT_TOLERANCE)))
            if index is not None:
                in_index = np.isin(ids, index.ids())
                if in_index.any():
                    stored = index.reconstruct_batch(ids[in_index])
                    diff = np.abs(stored - vectors[in_index]).max(axis=1)
                    mismatched += int(np.sum(~(diff <= VECTOR_TOLERANCE)))
            seen = np.concatenate([seen, ids])
        if bad_norm:
            self.error(f"{bad_norm} direction vectors are not unit length (or not finite)")
        if index is None:
            return
        missing = np.setdiff1d(seen, index.ids()).size
        stale = np.setdiff1d(index.ids(), seen).size
        if missing or stale:
            self.index_error(f"{missing} directions missing from it, {stale} stale ids in it")
        twice = index.ntotal - np.unique(index.ids()).size  # a shard copied, say
        if twice:
            self.index_error(f"{twice} vectors hold an id another one holds")
        if mismatched:
            self.index_error(f"{mismatched} vectors differ from DuckDB's")
        elif not missing and not stale and not index.exact:
            recall = measured_recall(index, n_queries=RECALL_QUERIES)
            self.findings.append(
                Finding(
                    "info",
                    self.model_id,
                    f"approximate index: recall@10 {recall:.3f} against an exact scan, "
                    f"{RECALL_QUERIES} of its own directions as queries",
                )
            )

    def _read_index(self, d_model: int, index_type: str) -> ResidualIndex | None:
        paths = shard_files(self.store)
        if not paths:
            listed = any(is_index_file(n) for n in self.manifest.get("members", {}))
            if not listed:  # else reported as missing already
                self.index_error("missing")
            return None
        shards = []
        for path in paths:
            try:
                shard = read_index(path)
            except UnreadableShard as exc:
                self.index_error(f"{path.name} {exc.why}")
                return None
            except Exception as exc:  # faiss raises worse than RuntimeError for some headers
                self.index_error(f"{path.name} cannot be read ({one_line(exc, 200)})")
                return None
            if shard.d != d_model:
                self.index_error(f"{path.name} has width {shard.d}, not d_model {d_model}")
                return None
            # an approximate model's shards are approximate unless too small to train
            expected_exact = index_type == EXACT or shard.ntotal < APPROXIMATE_MIN
            if is_exact(shard) != expected_exact:
                self.index_error(
                    f"{path.name}'s type does not match models.index_type {index_type!r}"
                )
            shards.append(shard)
        return ResidualIndex(shards)

    def _check_unembedding(self, model: dict[str, Any]) -> np.ndarray | None:
        """The unembedding, mapped, if it has the model's shape (else a finding)."""
        path = self.store / UNEMBED
        if not path.is_file():
            if UNEMBED not in self.manifest.get("members", {}):
                note = f"no {UNEMBED}: words are searched in token space only"
                self.findings.append(Finding("info", self.model_id, note))
            return None
        try:
            unembed = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            self.error(f"{UNEMBED} cannot be read ({one_line(exc)})")
            return None
        expected = (int(model["d_vocab"]), int(model["d_model"]))
        if unembed.shape != expected:
            shape = unembed.shape
            self.error(f"{UNEMBED} has shape {shape}, expected [d_vocab, d_model] {expected}")
            return None
        return unembed

    def _check_values(self, con: duckdb.DuckDBPyConnection, unembed: np.ndarray | None) -> None:
        """sigma, vectors and top-token scores as values (``atlas.core.value_checks``)."""

        def run(query: str, params: list[Any] | None) -> Any:
            return con.sql(query, params=params).to_arrow_table()

        problems = value_problems(
            run, self.model_id, "models", "directions", "top_tokens", unembed, vectors="none"
        )  # every vector's norm: _check_vectors
        for problem in problems:
            self.error(problem.split(": ", 1)[1])


def _derived(name: str) -> str | None:
    """What a repair does about a store's file ``name`` that disagrees with the manifest: the
    index and the hit rows are derived from DuckDB and written again; the rest needs the model."""
    return REBUILD_INDEX if is_index_file(name) else REBUILD_HITS if name in HIT_FILES else None


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(_one(con, f"SELECT count(*) FROM {table}")[0])


def _one(con: duckdb.DuckDBPyConnection, query: str, params: list[Any] | None = None) -> Any:
    """The single row of an aggregate query."""
    return con.sql(query, params=params).fetchall()[0]


def _vector_chunks(
    con: duckdb.DuckDBPyConnection, d_model: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(direction ids, float32 vectors) in id order, a bounded number of rows at a time."""
    query = "SELECT direction_id, vector FROM directions ORDER BY direction_id"
    reader = con.sql(query).to_arrow_reader(VECTOR_CHUNK)
    for batch in reader:
        yield numbers(batch.column(0)).astype(np.int64), vector_matrix(batch.column(1))


def _is_file_name(name: object) -> bool:
    """A name a store's manifest may list: a file of the store itself, not a path."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
    )
