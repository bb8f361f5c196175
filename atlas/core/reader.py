"""Reading an atlas: one locked-down DuckDB session over every model it holds.

What query code needs from an atlas is a :class:`Reader`: SQL over the contract's tables (one
view per table, all models together), where one model's rows are (:meth:`Reader.relation`),
which model a direction belongs to, and, where the data has them, a model's residual index and
unembedding. Two kinds of reader exist:

- :class:`StoreReader`, an atlas directory: each published store is ATTACHed ``READ_ONLY``;
  a store that cannot be attached (a truncated or overwritten ``model.duckdb``) is left out,
  named in :attr:`Reader.damaged`, and the others work as usual. A bundle file is verified and
  loaded into a private temporary atlas and read the same way (``atlas.core.exchange.sources``).
- ``ParquetReader`` (``atlas.core.exchange.parquet_reader``), a Parquet tree: views over its files
  through a read-only file system rooted at the tree. It has no unembedding, so text search
  there runs in token space; its residual index, where it has vectors, is built in memory.

Once everything is attached the session is locked (``sqlguard.lock_session``): no statement can
read or write any other file, and a researcher's statement runs through ``sqlguard`` (read-only,
rolled back, interruptible). DuckDB connections serve one statement at a time, so each thread
gets its own cursor on the one database instance; a handle can be used from many threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from atlas.core.cancel import running
from atlas.core.contents import contents_refusal
from atlas.core.contract import TABLES
from atlas.core.errors import AtlasError, DamagedIndex, NotFound, NoVectors, one_line
from atlas.core.hit_rows import HIT_FILES, HitFile, HitRow, hit_rows_sql
from atlas.core.index_guard import damaged_index, vectors_problem
from atlas.core.indexes import FileStamps
from atlas.core.layout import MODEL_DB, UNEMBED, AtlasDir, Catalog, dir_size, manifest_sizes
from atlas.core.memlimit import parse_memory_limit, session_config
from atlas.core.model_ids import left_out
from atlas.core.sqlguard import (
    engine_error,
    lock_session,
    raise_interrupt,
    run_statement,
    sql_string,
    stream_statement,
)
from atlas.core.vectors import numbers, vector_matrix
from atlas.core.views import create_views

USER_DB = "user.duckdb"
PARQUET_MARKER = "_svd_atlas.json"
# Up to this many directions' vectors are read through the primary key's index
# (``Reader.stored_vectors``): the crossover measured lies between 11 and 100.
FEW_IDS = 64
# Bytes of stored vectors compared at a time when an index is kept (``Reader.keep_index``).
VERIFY_BYTES = 32 << 20
# Read a catalog again if a store it names vanished meanwhile (a concurrent replace + sweep).
_OPEN_ATTEMPTS = 3

_R = TypeVar("_R")


class IndexCache:
    """Models' residual indexes: the ones a long-running process pinned (``pin``, up to its
    memory budget), and the last other one used. A search across more models than are pinned
    reads each of the others, searches it and lets it go, so memory stays the pinned indexes
    plus about one more, however many models are searched.

    Reading an index (from disk, or from object storage for a Parquet tree) happens outside
    the cache's lock, one reader per model, so a slow read never holds up searches of other
    models.
    """

    def __init__(self) -> None:
        self._pinned: dict[str, tuple[Any, int]] = {}
        self._last: tuple[str, Any] | None = None
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, model_id: str, load: Callable[[], tuple[Any, int]]) -> Any:
        """The model's index, read by ``load()`` (the index and its bytes) if not held."""
        with self._lock:
            held = self._held(model_id)
            if held is not None:
                return held
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            with self._lock:
                held = self._held(model_id)
            if held is not None:
                return held
            index, _ = load()
            with self._lock:
                self._last = (model_id, index)  # the previous one goes once no search holds it
            return index

    def pin(self, model_id: str, load: Callable[[], tuple[Any, int]]) -> None:
        """Read the model's index and keep it for the life of the cache."""
        index, size = load()
        with self._lock:
            self._pinned[model_id] = (index, size)

    def pinned(self, model_id: str) -> Any:
        """The model's pinned index, or None."""
        with self._lock:
            held = self._pinned.get(model_id)
        return held[0] if held else None

    def _held(self, model_id: str) -> Any:
        if model_id in self._pinned:
            return self._pinned[model_id][0]
        if self._last is not None and self._last[0] == model_id:
            return self._last[1]
        return None

    def cached(self) -> list[str]:
        """The models whose indexes are held now (the pinned ones first)."""
        with self._lock:
            last = [self._last[0]] if self._last and self._last[0] not in self._pinned else []
            return [*self._pinned, *last]

    def clear(self) -> None:
        with self._lock:
            self._pinned.clear()
            self._last = None


class Reader(ABC):
    """SQL over an atlas, and what query code needs besides; see the module notes.

    Subclasses attach their data to ``self._con`` before calling :meth:`_finish_open`, and
    implement the abstract methods: what models the data holds, where their rows, indexes
    and unembeddings are. Every reader of the same atlas answers every method the same
    (``tests/integration/test_reader_contract.py``), except what its data lacks (a bundle or
    tree exported without vectors has no index, and a tree may have no unembedding).
    """

    def __init__(self, location: str, memory_limit: int | str | None = None):
        self.location = location
        self.memory_limit = parse_memory_limit(memory_limit)
        self.damaged: dict[str, str] = {}  # model_id -> why it was left out
        self.damaged_indexes: dict[str, str] = {}  # model_id -> why its index was refused
        self.notes: list[str] = []  # things a reader of the output should know
        self.writable = False
        # bounded memory and no spilling to disk: a reader writes nothing anywhere, and a query
        # past the memory limit is one error line (``atlas.core.memlimit``)
        self._con = duckdb.connect(":memory:", config=session_config(self.memory_limit))
        self._cursors: dict[int, duckdb.DuckDBPyConnection] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.indexes = IndexCache()
        self._shapes: dict[str, tuple[int, str]] = {}  # model_id -> (d_model, index_type)
        self._contents: dict[str, int] = {}  # model_id -> models.format_version
        self._vocabularies: dict[str, pa.Table] = {}
        # model_id -> index files a full comparison found to differ from the stored vectors
        self._differing_files: dict[str, tuple[FileStamps, str]] = {}

    # -- opening ---------------------------------------------------------------------------

    def _finish_open(self, sources: dict[str, list[str]]) -> None:
        """Create one view per contract table over ``sources`` (table -> SQL relations), the
        convenience views, and lock the session."""
        for table in TABLES:
            parts = sources.get(table, [])
            if parts:
                union = " UNION ALL BY NAME ".join(f"SELECT * FROM {p}" for p in parts)
                self._con.execute(f"CREATE VIEW {table} AS {union}")
            else:  # no model has it (an empty atlas, or a tree that does not list the table)
                from atlas.core.schema import empty_table_ddl

                self._con.execute(empty_table_ddl(table))
        create_views(self._con)
        lock_session(self._con)

    # -- statements ------------------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the atlas's session."""
        ident = threading.get_ident()
        with self._lock:
            self._require_open()
            cursor = self._cursors.get(ident)
            if cursor is None:
                cursor = self._con.cursor()
                for statement in self._cursor_setup():
                    cursor.execute(statement)
                self._cursors[ident] = cursor
        return cursor

    def _cursor_setup(self) -> list[str]:
        """Statements each new cursor runs (session-local settings a locked session allows)."""
        return ["SET search_path = 'memory.main'"]

    def sql(self, query: str, params: list[Any] | dict[str, Any] | None = None) -> pa.Table:
        """One of the library's own queries (trusted SQL, untrusted values as parameters)."""
        cursor = self.cursor()
        try:
            with running(cursor):
                return cursor.sql(query, params=params).to_arrow_table()
        except (duckdb.Error, RuntimeError) as exc:
            raise self._engine_error(exc) from None

    def batches(
        self, query: str, params: list[Any] | dict[str, Any] | None, rows: int
    ) -> Iterator[pa.RecordBatch]:
        """A query's rows in Arrow batches of about ``rows`` rows (the schema kept when empty)."""
        cursor = self.cursor()
        try:
            with running(cursor):
                reader = cursor.sql(query, params=params).to_arrow_reader(rows)
            yielded = False
            while True:
                with running(cursor):  # a step at a time: the caller works between batches
                    batch = next(reader, None)
                if batch is None:
                    break
                yielded = True
                yield batch
        except (duckdb.Error, RuntimeError) as exc:
            raise self._engine_error(exc) from None
        if not yielded:
            yield pa.RecordBatch.from_pylist([], schema=reader.schema)

    def _engine_error(self, exc: BaseException) -> BaseException:
        """A library query's failure (``sqlguard.engine_error``)."""
        return engine_error(exc, self.memory_limit, prefix=f"{self.location}: ")

    def user_sql(
        self,
        query: str,
        params: list[Any] | dict[str, Any] | None = None,
        max_rows: int | None = None,
        max_bytes: int | None = None,
    ) -> pa.Table:
        """A researcher's statement: read-only unless the handle is writable (``sqlguard``),
        stopped with the caller's work (``atlas.core.cancel``)."""
        return run_statement(
            self.cursor(),
            query,
            params,
            self.writable,
            max_rows,
            max_bytes,
            memory_limit=self.memory_limit,
        )

    def user_sql_stream(
        self,
        query: str,
        params: list[Any] | dict[str, Any] | None,
        consume: Callable[[pa.RecordBatchReader], _R],
    ) -> _R:
        """:meth:`user_sql`, its rows handed to ``consume`` batch by batch, never held whole
        (``sqlguard.stream_statement``)."""
        return stream_statement(
            self.cursor(), query, params, self.writable, consume, memory_limit=self.memory_limit
        )

    # -- models ----------------------------------------------------------------------------

    @abstractmethod
    def model_ids(self) -> list[str]:
        """The ids of the models that can be read, in catalog order (damaged ones left out:
        they are in :attr:`damaged`)."""

    def require_model(self, model_id: str) -> None:
        """Nothing if the reader has ``model_id``; otherwise one line naming what it has."""
        if not isinstance(model_id, str):
            raise AtlasError(f"a model id is a string, not {type(model_id).__name__}")
        if model_id in self.model_ids():
            return
        if model_id in self.damaged:
            raise AtlasError(f"model {model_id!r} is damaged: {self.damaged[model_id]}")
        raise NotFound(
            f"no model {model_id!r} in {self.location}; it holds: "
            f"{', '.join(self.model_ids()) or 'nothing yet'}"
        )

    def contents_version(self, model_id: str) -> int:
        """The format version whose contents the model's rows hold (``models.format_version``:
        older than the current one for a model upgraded from an older atlas, bundle or tree),
        read once per handle (a card asks each time)."""
        with self._lock:
            known = self._contents.get(model_id)
        if known is None:
            (row,) = self.sql(
                f"SELECT format_version FROM {self.relation(model_id, 'models')}"
            ).to_pylist()
            known = int(row["format_version"] or 1)
            with self._lock:
                self._contents[model_id] = known
        return known

    def require_contents(self, model_id: str, what: str) -> None:
        """Nothing if the model's rows hold ``what`` (e.g. "circuits"), which the current
        format computes; otherwise one line saying it needs a re-ingest
        (``atlas.core.contents``)."""
        if refusal := contents_refusal(model_id, self.contents_version(model_id), what):
            raise refusal

    @abstractmethod
    def relation(self, model_id: str, table: str) -> str:
        """SQL naming one model's rows of a contract table (no filtering needed); a model
        the reader lacks is :meth:`require_model`'s refusal."""

    @abstractmethod
    def model_of(self, direction_id: int) -> str:
        """The model a direction belongs to; :class:`NotFound` for an id no model has, an
        :class:`AtlasError` for one that is not an integer (``check_direction_id``)."""

    def shape(self, model_id: str) -> tuple[int, str]:
        """The model's ``d_model`` and ``index_type``, read once per handle: what a search asks
        of every model it searches (a store the handle reads never changes)."""
        with self._lock:
            known = self._shapes.get(model_id)
        if known is None:
            rows = self.sql(
                f"SELECT d_model, index_type FROM {self.relation(model_id, 'models')}"
            ).to_pylist()
            if not rows:
                raise AtlasError(f"model {model_id!r} has no row in its models table")
            known = (int(rows[0]["d_model"]), str(rows[0]["index_type"]))
            with self._lock:
                self._shapes[model_id] = known
        return known

    def residual_index(self, model_id: str) -> Any:
        """The model's residual-space FAISS index (ids = direction_id), through the cache;
        :class:`DamagedIndex` if it disagrees with its store (``atlas.core.index_guard``), or
        if its files are still those that a full comparison (:meth:`keep_index`) found to
        differ from the stored vectors: a search's own checks would miss a changed vector that
        its scores never bring up."""
        self.require_model(model_id)
        with self.refusing_damaged_index(model_id):
            found_different = self._differing_files.get(model_id)
            if found_different is not None and found_different[0].unchanged():
                raise damaged_index(model_id, found_different[1])
            return self.indexes.get(model_id, lambda: self._read_index(model_id))

    def keep_index(self, model_id: str) -> None:
        """Read the model's index now, compare every vector it holds with the store's, and keep
        it while the handle is open: :meth:`stored_vectors` then reads the model's vectors from
        it (see ``atlas.core.index_guard``). A disagreement is a :class:`DamagedIndex`."""
        self.require_model(model_id)
        with self.refusing_damaged_index(model_id):
            self.indexes.pin(model_id, lambda: self._read_verified_index(model_id))

    def _read_verified_index(self, model_id: str) -> tuple[Any, int]:
        index, size = self._read_index(model_id)
        # in any order: each vector is compared with its id's
        rows = self.vector_batches(model_id, max(1, VERIFY_BYTES // (4 * self.shape(model_id)[0])))
        chunks = ((numbers(b.column(0)).astype(np.int64), vector_matrix(b.column(1))) for b in rows)
        problem = vectors_problem(index, chunks)
        if problem:
            with self._lock:
                self._differing_files[model_id] = (index.files, problem)
            raise damaged_index(model_id, problem)
        return index, size

    def vector_batches(self, model_id: str, rows: int) -> Iterator[pa.RecordBatch]:
        """Every ``(direction_id, vector)`` of the model, in batches of about ``rows``."""
        return self.batches(
            f"SELECT direction_id, vector FROM {self.relation(model_id, 'directions')}", None, rows
        )

    @contextlib.contextmanager
    def refusing_damaged_index(self, model_id: str) -> Iterator[None]:
        """Remember a model whose index was refused in the block (for ``damaged_indexes``:
        a server's health names it); the refusal goes on to the caller."""
        try:
            yield
        except DamagedIndex as exc:
            with self._lock:
                self.damaged_indexes[model_id] = str(exc)
            raise

    def index_problem(self, model_id: str) -> str | None:
        """Why the model's index is refused, as far as is known without reading it: a refusal
        seen already, or (where the reader can tell from file sizes) one it would meet."""
        return self.damaged_indexes.get(model_id)

    def stored_vectors(self, model_id: str, ids: np.ndarray) -> np.ndarray:
        """The vectors ``directions`` stores for ``ids`` of one model, in the order given
        (what the index's answers are scored against: k rows, not the table). A kept index was
        found equal to the table, vector for vector, when it was kept (:meth:`keep_index`), so
        while its files are unchanged they are read from it (microseconds); otherwise from
        DuckDB (a statement, 1-3 ms)."""
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return np.zeros((0, 0), np.float32)
        kept = self.indexes.pinned(model_id)
        if kept is not None and kept.files_unchanged():
            try:
                return kept.reconstruct_batch(ids)
            except KeyError:  # the kept index holds exactly the table's ids
                raise AtlasError(
                    f"model {model_id!r}: a direction id is not in its directions table"
                ) from None
        # the ids themselves as the filter (``IN (SELECT unnest(?))`` is a join, which scans
        # the table): a search's few as ``IN (?, ...)``, which DuckDB answers from the primary
        # key's index, a row at a time; a trace's hundreds as one list, ``= ANY(?)``, which
        # reads the row groups holding them (at 1e6 directions, after a FAISS search: 11 ids
        # 2.5 against 3.0 ms; 600 ids 18.5 against 8.4; alone, 100 ids 3.0 against 2.1)
        relation = self.relation(model_id, "directions")
        if len(ids) <= FEW_IDS:
            among, params = f"IN ({', '.join('?' * len(ids))})", ids.tolist()
        else:
            among, params = "= ANY(?)", [ids.tolist()]
        rows = self.sql(
            f"SELECT direction_id, vector FROM {relation} WHERE direction_id {among}", params
        )
        found = numbers(rows["direction_id"]).astype(np.int64)
        vectors = vector_matrix(rows["vector"]) if rows.num_rows else np.zeros((0, 0), np.float32)
        order = np.argsort(found)
        at = order[np.searchsorted(found, ids, sorter=order)] if len(found) else np.zeros(0, int)
        if len(found) != len(set(ids.tolist())) or not np.array_equal(found[at], ids):
            raise AtlasError(f"model {model_id!r}: a direction id is not in its directions table")
        return vectors[at]

    def vocabulary(self, model_id: str) -> pa.Table:
        """The model's ``vocab`` table (``token_id``, ``token_norm``, ``token_display``), read
        once per handle: turning words into tokens is then a scan in memory, not a statement
        (about 25 bytes a token: 0.75 MB for MiniLM's 30,522, measured)."""
        self.require_model(model_id)
        with self._lock:
            held = self._vocabularies.get(model_id)
        if held is None:
            held = self.sql(
                "SELECT token_id, token_norm, token_display "
                f"FROM {self.relation(model_id, 'vocab')} WHERE token_id IS NOT NULL"
            ).combine_chunks()
            with self._lock:
                self._vocabularies[model_id] = held
        return held

    def hit_rows(self, model_id: str, ids: list[int]) -> dict[int, HitRow]:
        """What a search hit shows of each of ``ids`` (directions of ``model_id``), by id:
        read from ``directions`` and ``top_tokens`` here; an atlas directory reads its stores'
        hit-row files instead (``atlas.core.hit_rows``)."""
        if not ids:
            return {}
        return hit_rows_sql(
            self.sql,
            self.relation(model_id, "directions"),
            self.relation(model_id, "top_tokens"),
            ids,
        )

    def partner(
        self, model_id: str, direction_id: int, matrix_id: int, sv_index: int
    ) -> int | None:
        """The other side of ``direction_id``'s singular triple (read and write, query and key),
        or None where the model stores one side."""
        rows = self.sql(
            f"SELECT direction_id FROM {self.relation(model_id, 'directions')} "
            "WHERE matrix_id = ? AND sv_index = ? AND direction_id <> ?",
            [matrix_id, sv_index, direction_id],
        ).to_pylist()
        return rows[0]["direction_id"] if rows else None

    @abstractmethod
    def _read_index(self, model_id: str) -> tuple[Any, int]:
        """The model's residual-space FAISS index (ids = direction_id), read, and its size in
        bytes; :class:`NoVectors` for a model stored without vectors."""

    @abstractmethod
    def index_bytes(self, model_id: str) -> int:
        """About how much memory the model's index takes once read (0 without vectors),
        without reading it."""

    def has_vectors(self, model_id: str) -> bool:
        """Whether the model has direction vectors here (not a ``--vectors none`` bundle)."""
        return self.index_bytes(model_id) > 0

    @abstractmethod
    def has_exact_index(self, model_id: str) -> bool:
        """Whether a search of the model's index returns the exact neighbours, without
        reading it."""

    @abstractmethod
    def unembedding(self, model_id: str) -> np.ndarray:
        """The model's centered unembedding, ``[d_vocab, d_model]`` float16 (memory-mapped
        where the data is local); one :class:`AtlasError` line where :meth:`has_unembedding`
        is False."""

    @abstractmethod
    def keep_unembedding(self, model_id: str) -> None:
        """Map the model's unembedding now and keep it mapped while the handle is open; as
        :meth:`unembedding` where there is none."""

    @abstractmethod
    def has_unembedding(self, model_id: str) -> bool:
        """Whether :meth:`unembedding` has the model's unembedding to give."""

    @abstractmethod
    def model_sizes(self, model_ids: list[str] | None = None) -> dict[str, int]:
        """Bytes of stored data per model (of ``model_ids``, or all), each above 0."""

    # -- closing ---------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise AtlasError(f"the atlas handle for {self.location} is closed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for cursor in self._cursors.values():
                cursor.close()
            self._cursors.clear()
            self._con.close()
        self.indexes.clear()  # unmapped once no search holds them


def check_direction_id(direction_id: Any) -> int:
    """A direction id as an int, or one clear refusal (``"432"``, ``4.5`` and ``True`` are not)."""
    if isinstance(direction_id, bool) or not isinstance(direction_id, int | np.integer):
        raise AtlasError(f"a direction id is an integer, not {direction_id!r}")
    return int(direction_id)


class StoreReader(Reader):
    """An atlas directory (or a bundle loaded into a private one); see the module notes."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        write: bool = False,
        location: str = "",
        memory_limit: int | str | None = None,
    ):
        self.dir = AtlasDir(root)
        super().__init__(location or str(self.dir.root), memory_limit)
        self._unembeddings: dict[str, np.ndarray] = {}
        self._contracts: dict[str, Any] = {}  # model_id -> its index_guard.IndexContract
        self._hit_files: dict[str, HitFile] = {}
        self._index_sizes: dict[str, list[int]] = {}  # model_id -> its index files' sizes
        self._index_lock = threading.Lock()
        self._user_db = False
        try:
            self.catalog = self._attach_stores()
            self._attach_user_db(write)
            self._finish_open(self._store_relations())
        except BaseException:
            self._con.close()
            raise

    def _attach_stores(self) -> Catalog:
        self.dir.require_atlas()
        for attempt in range(_OPEN_ATTEMPTS):
            catalog = self.dir.read_catalog()
            self._aliases: dict[str, int] = {}
            self.damaged = {}
            vanished = False
            for i, (model_id, entry) in enumerate(catalog.models.items()):
                if why := left_out(model_id):
                    self.damaged[model_id] = why
                    continue
                path = self.dir.store_path(entry) / MODEL_DB
                if not path.parent.is_dir() and attempt < _OPEN_ATTEMPTS - 1:
                    vanished = True  # replaced and swept since the catalog was read
                    break
                try:
                    self._con.execute(f"ATTACH {sql_string(str(path))} AS m{i} (READ_ONLY)")
                    problem = store_problem(self._con, f"m{i}", model_id)
                except duckdb.Error as exc:
                    raise_interrupt(exc)
                    problem = f"cannot be read ({one_line(exc, 120)})"
                if problem:
                    self._detach(f"m{i}")
                    self.damaged[model_id] = (
                        f"its {MODEL_DB} {problem}; a repair (`check` with `repair`) or "
                        "`ingest` with `replace` recovers"
                    )
                    continue
                self._aliases[model_id] = i
            if not vanished:
                return catalog
            for i in self._aliases.values():
                self._detach(f"m{i}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _detach(self, alias: str) -> None:
        with contextlib.suppress(duckdb.Error):
            self._con.execute(f"DETACH DATABASE IF EXISTS {alias}")

    def _store_relations(self) -> dict[str, list[str]]:
        """Each contract table's per-store relations (every store has every table:
        ``store_problem``)."""
        # vectors of models of different widths union as variable-length lists
        cast = {"directions": "(SELECT * REPLACE (vector::FLOAT[] AS vector) FROM {})"}
        return {
            table: [cast.get(table, "{}").format(f"m{i}.{table}") for i in self._aliases.values()]
            for table in TABLES
        }

    def _attach_user_db(self, write: bool) -> None:
        """The researcher's own tables (``user.duckdb``): read-only unless ``write``.

        A reader skips it (with a note) while another process writes it.
        """
        path = self.dir.root / USER_DB
        if not write and not path.exists():
            return
        mode = "" if write else " (READ_ONLY)"
        try:
            self._con.execute(f"ATTACH {sql_string(str(path))} AS user_db{mode}")
        except duckdb.Error as exc:
            raise_interrupt(exc)
            if not write:
                self.notes.append(
                    f"{path} is being written by another process: your own tables are not "
                    "visible in this session"
                )
                return
            if not os.access(path if path.exists() else self.dir.root, os.W_OK):
                raise AtlasError(f"permission denied: cannot write {path}") from None
            if "lock" in str(exc).lower():
                raise AtlasError(
                    f"{path} is open elsewhere (another process, or another handle of this "
                    "one): close it to write"
                ) from None
            raise AtlasError(f"cannot open {path} for writing: {one_line(exc)}") from None
        self.writable = write
        self._user_db = True

    def _cursor_setup(self) -> list[str]:
        if not self._user_db:
            return super()._cursor_setup()
        if self.writable:  # new tables go to user.duckdb; the views are still found
            return ["USE user_db", "SET search_path = 'user_db.main,memory.main'"]
        return ["SET search_path = 'memory.main,user_db.main'"]

    def model_ids(self) -> list[str]:
        return list(self._aliases)

    def relation(self, model_id: str, table: str) -> str:
        self.require_model(model_id)
        return f"m{self._aliases[model_id]}.{table}"

    def model_of(self, direction_id: int) -> str:
        direction_id = check_direction_id(direction_id)
        for model_id, entry in self.catalog.models.items():
            first = entry.first_direction_id
            if first <= direction_id < first + entry.n_directions:
                self.require_model(model_id)
                return model_id
        raise NotFound(f"no direction {direction_id} in {self.location}")

    def store_path(self, model_id: str) -> Path:
        self.require_model(model_id)
        return self.dir.store_path(self.catalog.models[model_id])

    def vector_batches(self, model_id: str, rows: int) -> Iterator[pa.RecordBatch]:
        """Read through a session of their own, closed after: the handle's session would keep
        the blocks it read cached, every vector of the model (at 1e6 directions of width 128,
        435 MB in each server worker that compared its index with the store)."""
        con = duckdb.connect(":memory:", config=session_config(self.memory_limit))
        try:
            con.execute(
                f"ATTACH {sql_string(str(self.store_path(model_id) / MODEL_DB))} AS m (READ_ONLY)"
            )
            yield from con.sql("SELECT direction_id, vector FROM m.directions").to_arrow_reader(
                rows
            )
        except duckdb.Error as exc:
            raise self._engine_error(exc) from None
        finally:
            con.close()

    def _read_index(self, model_id: str) -> tuple[Any, int]:
        """Shards memory-mapped, once they agree with the store (``index_guard``); a model
        without vectors or with a damaged index is one line."""
        from atlas.core.index_guard import read_checked
        from atlas.core.indexes import shard_files

        contract = self._index_contract(model_id)
        shards = shard_files(self.store_path(model_id))
        if not shards and not contract.sizes:
            raise no_vectors(model_id)
        return read_checked(shards, contract), sum(p.stat().st_size for p in shards)

    def _index_contract(self, model_id: str) -> Any:
        """What the model's index must agree with (its manifest, width and id range); read
        once per handle, as a published store never changes."""
        from atlas.core.index_guard import IndexContract

        with self._index_lock:
            contract = self._contracts.get(model_id)
        if contract is None:
            entry = self.catalog.models[model_id]
            contract = IndexContract.of_store(
                model_id,
                self.store_path(model_id),
                self.shape(model_id)[0],
                entry.first_direction_id,
                entry.n_directions,
            )
            with self._index_lock:
                self._contracts[model_id] = contract
        return contract

    def hit_rows(self, model_id: str, ids: list[int]) -> dict[int, HitRow]:
        """From the store's hit-row file, mapped once per handle (a published store never
        changes): no SQL statement (``atlas.core.hit_rows``)."""
        if not ids:
            return {}
        with self._index_lock:
            hits = self._hit_files.get(model_id)
        if hits is None:
            entry = self.catalog.models[model_id]
            store = self.store_path(model_id)
            sizes = manifest_sizes(store, lambda name: name in HIT_FILES)
            with self.refusing_damaged_index(model_id):
                hits = HitFile(model_id, store, entry.first_direction_id, entry.n_directions,
                               sizes)  # fmt: skip
            with self._index_lock:
                hits = self._hit_files.setdefault(model_id, hits)
        with self.refusing_damaged_index(model_id):
            return hits.get(ids)

    def partner(
        self, model_id: str, direction_id: int, matrix_id: int, sv_index: int
    ) -> int | None:
        """From the hit rows where they show it (no statement): ingest numbers a triple's two
        sides next to each other, so the partner is a neighbour of the same layer, head, kind
        and sv_index on the other side; the table is asked otherwise."""
        entry = self.catalog.models[model_id]
        first, stop = entry.first_direction_id, entry.first_direction_id + entry.n_directions
        near = [i for i in (direction_id - 1, direction_id + 1) if first <= i < stop]
        rows = self.hit_rows(model_id, [direction_id, *near])
        me = rows[direction_id]
        where = (me.layer, me.head, me.kind, me.sv_index)
        for i in near:
            r = rows[i]
            if (r.layer, r.head, r.kind, r.sv_index) == where and r.side != me.side:
                return i
        return super().partner(model_id, direction_id, matrix_id, sv_index)

    def index_problem(self, model_id: str) -> str | None:
        from atlas.core.index_guard import damaged_index, file_problem
        from atlas.core.indexes import shard_files

        known = super().index_problem(model_id)
        if known or model_id not in self._aliases:
            return known
        paths = shard_files(self.store_path(model_id))
        problem = file_problem(paths, self._index_contract(model_id))
        if problem:
            return str(damaged_index(model_id, problem))
        entry = self.catalog.models[model_id]
        try:  # the hit rows every search describes its hits with: mapped once, sizes checked
            if entry.n_directions:
                self.hit_rows(model_id, [entry.first_direction_id])
        except AtlasError as exc:
            return str(exc)
        return None

    def index_bytes(self, model_id: str) -> int:
        return sum(self._index_listing(model_id))

    def has_vectors(self, model_id: str) -> bool:
        return bool(self._index_listing(model_id))

    def _index_listing(self, model_id: str) -> list[int]:
        """The sizes of the index files the store's manifest lists (what its writer wrote: a
        missing or emptied file is damage, refused as such when the index is read, not a model
        without vectors), or of the files there where it cannot be read; once per handle and
        model (a word search asks each time whether the model has vectors): its stores do not
        change."""
        from atlas.core.indexes import is_index_file, shard_files

        if model_id not in self._index_sizes:
            store = self.store_path(model_id)
            listed = manifest_sizes(store, is_index_file)
            self._index_sizes[model_id] = (
                list(listed.values())
                if listed is not None
                else [p.stat().st_size for p in shard_files(store)]
            )
        return self._index_sizes[model_id]

    def has_exact_index(self, model_id: str) -> bool:
        from atlas.core.indexes import EXACT

        return self.shape(model_id)[1] == EXACT

    def has_unembedding(self, model_id: str) -> bool:
        with self._index_lock:
            if model_id in self._unembeddings:
                return True
        return (self.store_path(model_id) / UNEMBED).is_file()

    def unembedding(self, model_id: str) -> np.ndarray:
        """Like the index: the kept map (``keep_unembedding``), or a map of its own, unmapped
        when the caller drops it. A search across many models touches a few rows of each,
        and the pages a kept map has read stay in the process's memory."""
        with self._index_lock:
            kept = self._unembeddings.get(model_id)
        return kept if kept is not None else self._map_unembedding(model_id)

    def keep_unembedding(self, model_id: str) -> None:
        unembed = self._map_unembedding(model_id)
        with self._index_lock:
            self._unembeddings.setdefault(model_id, unembed)

    def _map_unembedding(self, model_id: str) -> np.ndarray:
        path = self.store_path(model_id) / UNEMBED
        if not path.is_file():
            raise no_vectors(model_id)
        try:
            unembed = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise damaged_file(model_id, path, exc) from None
        if unembed.ndim != 2:
            raise damaged_file(model_id, path, ValueError(f"shape {unembed.shape}"))
        return unembed

    def model_sizes(self, model_ids: list[str] | None = None) -> dict[str, int]:
        return {m: dir_size(self.store_path(m)) for m in model_ids or self.model_ids()}

    def close(self) -> None:
        super().close()
        with self._index_lock:
            self._unembeddings.clear()
            self._hit_files.clear()


def store_problem(con: duckdb.DuckDBPyConnection, alias: str, model_id: str) -> str | None:
    """Why the store attached as ``alias`` is not ``model_id``'s (a table of the contract is
    missing, or its models table names another model), or None."""
    present = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [alias]
        ).fetchall()
    }
    missing = [t for t in TABLES if t not in present]
    if missing:
        return f"is not an svd-atlas store (it has no {missing[0]} table)"
    try:
        rows = con.execute(f"SELECT model_id FROM {alias}.models").fetchall()
    except duckdb.BinderException:
        return "is not an svd-atlas store (its models table has no model_id)"
    if rows != [(model_id,)]:
        return f"holds {[r[0] for r in rows][:3]!r} in its models table, not {model_id!r}"
    return None


def no_vectors(model_id: str) -> AtlasError:
    return NoVectors(
        f"model {model_id!r} has no vectors (it was loaded from a bundle exported with "
        "`vectors` none), so it cannot be searched: load a bundle with vectors or ingest it again"
    )


def damaged_file(model_id: str, path: Path, exc: BaseException) -> AtlasError:
    return AtlasError(
        f"model {model_id!r}: {path.name} is damaged ({one_line(exc, 200)}); "
        "`check` names the damage, and `ingest` with `replace` recovers"
    )
