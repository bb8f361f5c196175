"""The public Python façade: ``atlas.open(path)`` returns an :class:`Atlas`.

An :class:`Atlas` is a thin handle over a :class:`atlas.core.reader.Reader` (which does the
reading) that calls the query layer with checked arguments: every misuse is an
:class:`AtlasError` with one clear line. Opened with ``write=True`` it also ingests, loads and
repairs (:mod:`atlas.writing`). The CLI and the HTTP server call the same methods. A handle
can be shared by many threads (each gets its own DuckDB cursor); a write reopens the handle's
reader, so write from one thread.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from atlas import writing
from atlas.core.cancel import Deadline, stoppable
from atlas.core.exchange.bundle_format import BundleManifest
from atlas.core.exchange.export import export_bundle
from atlas.core.exchange.load import LoadResult
from atlas.core.exchange.parquet_tree import export_parquet_tree
from atlas.core.exchange.sources import open_reader
from atlas.core.layout import AtlasDir
from atlas.core.progress import Progress, no_progress
from atlas.core.reader import Reader, StoreReader
from atlas.core.vectors import python_rows
from atlas.errors import AtlasError, AtlasWarning
from atlas.params import (
    CompositionParams,
    MatrixCardParams,
    Params,
    SearchParams,
    SpectrumParams,
    SqlParams,
    TraceParams,
    plain_type,
    validate,
)
from query.cards import direction_card, matrix_card, matrix_stats
from query.circuits import composition_trace, head_edges, head_summary, strongest
from query.coherence import ListCoherence, list_coherence
from query.compare import compare as compare_models
from query.editable import check_editable, check_eps, edit_pairs, edit_refusal
from query.search import Hits, approximate_note, resolve_query
from query.search import search as run_search
from query.spectrum import Spectra, load_spectra
from query.trace import Trace, TraceProgress
from query.trace import trace as run_trace

F = TypeVar("F", bound=Callable[..., Any])
_R = TypeVar("_R")

MODELS_QUERY = """
    SELECT model_id, architecture, n_layers AS layers, n_heads AS heads, n_kv_heads AS kv_heads,
           d_model, d_head, d_mlp, d_vocab, gated_mlp, processing, n_matrices AS matrices,
           n_directions AS directions, index_type AS index, source, spec, ingested_at
    FROM models
"""


def _takes(params: type[Params]) -> Callable[[F], F]:
    """Give a method the signature of its parameter model: its own arguments, then each field
    of ``params`` it does not name itself as a keyword with the field's default (what
    ``help()`` and ``inspect.signature`` show; the method validates ``**options`` with the
    model)."""

    def decorate(method: F) -> F:
        signature = inspect.signature(method)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in own}
        fields = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if field.is_required() else field.default,
                annotation=plain_type(field.annotation),
            )
            for name, field in params.model_fields.items()
            if name not in names
        ]
        method.__signature__ = signature.replace(parameters=[*own, *fields])  # type: ignore[attr-defined]
        return method

    return decorate


class Atlas:
    """An atlas (an atlas directory, a bundle or a Parquet tree); use :func:`atlas.open`.

    ::

        a = atlas.open("data/atlas")
        a.sql("SELECT * FROM head_summary ORDER BY sigma_max DESC LIMIT 5").to_pandas()
        hits = a.search("fire", k=5, kind="ov", layer=(0, 3))    # or layer="0:3"
        steps = a.trace(hits[0].direction_id, min_cos=0.3, hops=2)
        card = a.card("minilm", 3, 3)     # or a.card(direction_id)

        w = atlas.open("my/atlas", write=True)  # created if needed
        w.ingest("random:gpt2-tiny", top_k=10)
        w.check().ok
    """

    def __init__(
        self,
        reader: Reader,
        write: bool = False,
        memory_limit: int | str | None = None,
        source: str | os.PathLike[str] | None = None,
    ):
        self._reader: Reader | None = reader  # None: reopened when next read (after a write)
        self._closed = False
        self._location = reader.location
        self.writable = write
        self._memory_limit = memory_limit
        self._source = source if source is not None else reader.location

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        write: bool = False,
        memory_limit: int | str | None = None,
    ) -> Atlas:
        if not isinstance(location, str | os.PathLike):
            raise AtlasError(f"an atlas location is a path or a URL, not {location!r}")
        if write and not writing.is_tree(location) and not Path(location).is_file():
            AtlasDir(location).ensure_writable()  # opens or creates it
        return cls(_open_reader(location, write, memory_limit), write, memory_limit, location)

    @property
    def reader(self) -> Reader:
        """The reader of the atlas as it is now (reopened after this handle wrote to it)."""
        if self._reader is None:
            if self._closed:
                raise AtlasError(f"the atlas handle for {self.location} is closed")
            self._reader = _open_reader(self._source, self.writable, self._memory_limit)
        return self._reader

    @property
    def location(self) -> str:
        return self._location

    @property
    def damaged(self) -> dict[str, str]:
        """Models left out because their store cannot be read (model_id -> why)."""
        return dict(self.reader.damaged)

    def model_ids(self) -> list[str]:
        return self.reader.model_ids()

    def residual_index(self, model_id: str) -> Any:
        """One model's FAISS index of unit direction vectors (ids = direction_id); an
        :class:`AtlasError` for a model without vectors."""
        return self.reader.residual_index(model_id)

    def load_indexes(self, max_bytes: int) -> None:
        """Read the models' indexes now, in order while they fit in ``max_bytes``, and keep
        them, with every unembedding mapped (what a long-running server does once). Without
        this, a handle keeps only the index it used last: a search across many models streams
        through their indexes in the memory of one, and so does a search across the models
        that did not fit."""
        kept = 0
        for model_id in self.model_ids():
            if self.reader.has_unembedding(model_id):
                self.reader.keep_unembedding(model_id)
            size = self.reader.index_bytes(model_id)
            if size and kept + size <= max_bytes:
                try:
                    self.reader.keep_index(model_id)
                except AtlasError as exc:  # damaged, or too little memory to compare it
                    warnings.warn(str(exc), AtlasWarning, stacklevel=2)  # the others are kept
                    continue
                kept += size

    def damaged_indexes(self) -> dict[str, str]:
        """Models whose index is refused as damaged (model_id -> the refusal): those a search
        met, and those whose index files disagree with their manifest. The other models are
        searched as usual."""
        found = {}
        for model_id in self.model_ids():
            problem = self.reader.index_problem(model_id)
            if problem:
                found[model_id] = problem
        return found

    def loaded_indexes(self) -> list[str]:
        """The models whose residual indexes are loaded now."""
        return self.reader.indexes.cached()

    def model(self, model_id: str) -> dict[str, Any]:
        """One model's row of :meth:`models` (:class:`NotFound` for an unknown id)."""
        self.reader.require_model(model_id)
        (row,) = python_rows(self.reader.sql(f"{MODELS_QUERY} WHERE model_id = ?", [model_id]))
        row["size_bytes"] = self.reader.model_sizes([model_id])[model_id]
        return row

    def tables(self) -> list[dict[str, Any]]:
        """Every table and view SQL can read: ``name`` and its ``columns``, in order."""
        return self.reader.sql(
            "SELECT table_name AS name, list(column_name ORDER BY ordinal_position) AS columns "
            "FROM information_schema.columns WHERE table_schema = 'main' "
            "GROUP BY table_name ORDER BY table_name"
        ).to_pylist()

    def matrix_stats(self, model_id: str, stat: str = "sigma_max") -> list[dict[str, Any]]:
        """``layer, head, kind, value`` for every matrix of a model, ``stat`` one of
        ``MATRIX_STATS`` (sigma_max, stable_rank, effective_rank, coherence, coherence_pct,
        top_coherence and top_coherence_pct: those of the matrix's top direction)."""
        return matrix_stats(self.reader, model_id, stat)

    def models(self) -> list[dict[str, Any]]:
        """One row per model: shape, processing, directions, index type and bytes on disk."""
        rows = python_rows(self.reader.sql(f"{MODELS_QUERY} ORDER BY model_id"))
        sizes = self.reader.model_sizes()
        for r in rows:
            r["size_bytes"] = sizes.get(r["model_id"], 0)
        return rows

    @_takes(SqlParams)
    def sql(
        self,
        query: str,
        params: list[Any] | dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_bytes: int | None = None,
        **options: Any,
    ) -> pa.Table:
        """Run one statement and return an Arrow table (``.to_pandas()`` for pandas).

        Read-only: a query (``SELECT``, ``EXPLAIN``) unless the atlas was opened with
        ``write=True``, and even then only ``user.duckdb`` can change. ``timeout`` (seconds)
        stops a runaway query; so does Ctrl-C. ``max_rows`` keeps only the first rows, without
        computing the others where the query allows; ``max_bytes`` (with it) stops at about
        that many bytes of rows. The parameters of :class:`atlas.params.SqlParams`.
        """
        p = validate(SqlParams, query=query, **options)
        deadline = Deadline.after(timeout)
        with stoppable(deadline):
            return self.reader.user_sql(p.query, params, p.max_rows, max_bytes)

    def sql_stream(
        self,
        query: str,
        consume: Callable[[pa.RecordBatchReader], _R],
        params: list[Any] | dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> _R:
        """Run one statement as :meth:`sql` does and hand its rows to ``consume``, a function
        of a ``pyarrow.RecordBatchReader``, returning what it returns. The rows are read as
        ``consume`` asks for them, never held whole: a result larger than memory can be
        written to a file (``svd-atlas sql --out``), where :meth:`sql` would hold it all
        outside the handle's ``memory_limit``."""
        p = validate(SqlParams, query=query)
        with stoppable(Deadline.after(timeout)):
            return self.reader.user_sql_stream(p.query, params, consume)

    @_takes(SearchParams)
    def search(
        self,
        text: str | list[str] | None = None,
        *,
        vector: str | Path | np.ndarray | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Hits:
        """Directions nearest to a concept: words (``text``), a ``direction`` id or a
        ``vector`` (a ``.npy`` path or an array); a list of :class:`Hit` whose ``notes`` repeat
        the warnings given. The parameters and their limits are those of
        :class:`atlas.params.SearchParams`: ``kind`` a kind or a list of them, ``layer`` a
        layer or ``(start, stop)`` (stop excluded, None for the last), ``head`` a head number
        or a list of them (or, as in the CLI and over HTTP, text: ``"ov,mlp_in"``, ``"0:3"``).
        """
        p = validate(SearchParams, text=text, **options)
        filters = p.filters()
        query = resolve_query(self.reader, p.text, p.direction, vector, p.models(), p.space)
        notes = [n for n in (*query.notes, approximate_note(self.reader, query, filters)) if n]
        for note in notes:
            warnings.warn(note, AtlasWarning, stacklevel=2)

        def work() -> Hits:
            return run_search(self.reader, query, filters, k=p.k, min_score=p.min_score)

        hits: Hits = self._call(work, timeout)
        for note in hits.notes:  # models left out as the search ran (a damaged index)
            warnings.warn(note, AtlasWarning, stacklevel=2)
        notes = [*notes, *hits.notes]
        if not hits:  # something could match (else NoMatch): say why nothing did
            notes.append(_empty_note(p.min_score, p.direction))
            warnings.warn(notes[-1], AtlasWarning, stacklevel=2)
        return Hits(hits, notes)

    @_takes(TraceParams)
    def trace(
        self,
        direction_id: int,
        *,
        timeout: float | None = None,
        progress: TraceProgress | None = None,
        **options: Any,
    ) -> Trace | CompositionTrace:
        """Every direction within ``hops`` steps of ``|cos| >= min_cos`` from ``direction_id``:
        at most ``limit`` of them, the origin included; a list of steps whose ``notes`` repeat
        the warnings given (that the limit cut it, say). ``progress(hop, done, total)`` is
        told after each direction a hop expands. The parameters are those of
        :class:`atlas.params.TraceParams` (the filters as in :meth:`search`).

        ``via="composition"`` follows an OV write direction instead to the Q, K and V read
        directions of later heads whose composition it carries (at least ``min_share`` of a
        score²), hop by hop: a :class:`CompositionTrace` of records (``query.circuits``)."""
        p = validate(TraceParams, **options)
        if p.via == "composition":
            rows, notes = composition_trace(self.reader, direction_id, p.hops, p.min_share, p.limit)
            for note in notes:
                warnings.warn(note, AtlasWarning, stacklevel=2)
            return CompositionTrace(rows, notes)

        def work() -> Trace:
            return run_trace(
                self.reader,
                direction_id,
                p.min_cos,
                p.hops,
                p.filters(),
                limit=p.limit,
                across_models=not p.same_model,
                models=p.models(),
                progress=progress,
            )

        steps: Trace = self._call(work, timeout)
        for note in steps.notes:
            warnings.warn(note, AtlasWarning, stacklevel=2)
        return steps

    @_takes(CompositionParams)
    def composition(self, model: str, **options: Any) -> dict[str, Any]:
        """Head composition (``composition`` table): without ``layer`` and ``head``, the model's
        ``top`` strongest edges per mode (``{"model_id", "edges"}``); with them, that head's
        in-edges (``in``: who feeds its Q, K, V) and out-edges (``out``: whom it feeds), each
        with the direction pairs that carry it. The parameters of
        :class:`atlas.params.CompositionParams`."""
        p = validate(CompositionParams, model=model, **options)
        if p.layer is None or p.head is None:
            edges = strongest(self.reader, p.model, p.modes(), p.top, p.min_relative)
            return {"model_id": p.model, "edges": edges}
        return head_edges(self.reader, p.model, p.layer, p.head, p.modes(), p.top, p.min_relative)

    @_takes(MatrixCardParams)
    def card(self, *target: Any, **options: Any) -> dict[str, Any]:
        """``card(direction_id)`` or ``card(model_id, layer, head_or_kind)`` (its directions
        from sv_index ``offset``, ``top`` of them, of a head's ``circuit`` ``ov`` or ``qk``:
        :class:`atlas.params.MatrixCardParams`)."""
        p = validate(MatrixCardParams, **options)
        if len(target) == 1:
            return direction_card(self.reader, target[0])
        if len(target) == 3:
            model_id, layer, head = target
            card = matrix_card(self.reader, model_id, layer, head, p.top, p.offset, p.circuit)
            if card["kind"] == "ov":  # a head's circuits summarised on its OV card
                card.update(head_summary(self.reader, model_id, card["layer"], card["head"], 5))
            elif card["kind"] == "qk":  # whether positions rotate what it shows
                models = self.reader.relation(model_id, "models")
                (row,) = self.reader.sql(f"SELECT positional_embedding FROM {models}").to_pylist()
                card["positional_embedding"] = row["positional_embedding"]
            return card
        raise AtlasError(
            "card takes a direction id, or a model id, a layer and a head (or MLP kind)",
            param="target",
        )

    @_takes(SpectrumParams)
    def spectrum(self, model: str, **options: Any) -> Spectra:
        """Spectra of ``model`` by layer, and the layers whose norm jumps (query.spectrum); the
        parameters of :class:`atlas.params.SpectrumParams`."""
        p = validate(SpectrumParams, model=model, **options)
        return load_spectra(self.reader, p.model, p.kinds(), p.jump_factor)

    def compare(self, model_a: str, model_b: str) -> list[dict[str, Any]]:
        """Two versions of one model matrix by matrix, then per kind (query.compare)."""
        return compare_models(self.reader, model_a, model_b)

    def export(
        self,
        out: str | os.PathLike[str],
        model_ids: list[str] | None = None,
        vectors: str = "f32",
        progress: Progress | None = None,
    ) -> BundleManifest:
        """Write models (all when none named) to one bundle file (see the README);
        ``progress(what, done, total)`` is told the models written."""
        models = list(model_ids or [])
        return export_bundle(self.reader, models, Path(out), vectors, progress or no_progress)

    def export_parquet(
        self,
        dest: str | os.PathLike[str],
        model_ids: list[str] | None = None,
        vectors: str = "f32",
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Write models (all when none named) to a Parquet tree: a folder or an object-store URL
        such as ``s3://bucket/prefix``; ``progress`` as for :meth:`export`. A model whose
        direction ids overlap another's in the tree (exported from another atlas) is written,
        with a warning: a direction looked up by id there will be refused."""
        models = list(model_ids or [])
        info = export_parquet_tree(self.reader, models, str(dest), vectors, progress or no_progress)
        for note in info["notes"]:  # ids the tree now holds twice
            warnings.warn(note, AtlasWarning, stacklevel=2)
        return info

    def ingest(self, *models: writing.Model, **options: Any) -> writing.IngestResult:
        """Decompose models into this atlas, as ``svd-atlas ingest`` does: ``"minilm"``, a
        local folder, a hub name, ``"random:SHAPE"``, or ``(MODEL, model_id)``; the options
        are the command's (``name``, ``device``, ``processing``, ``top_k``, ``max_rank``,
        ``dtype``, ``gap_tol``, ``exact_max``, ``coherence``, ``replace``, ``ray``,
        ``gpus_per_task``, ``retries``, ``from_file``, ``progress``). Returns what was
        ingested: each model's id, status, directions and seconds."""
        root = self._writing("ingest")
        try:
            return writing.ingest(root, *models, **options)
        finally:
            self._wrote()

    def load(
        self,
        bundle: str | os.PathLike[str],
        replace: bool = False,
        progress: Progress | None = None,
    ) -> list[LoadResult]:
        """Import every model of ``bundle`` (see :meth:`export`), verified first, all or
        nothing; ``replace`` replaces models already here; ``progress`` as for :meth:`export`.
        One result per model: its id, directions and the direction ids it got."""
        root = self._writing("load")
        try:
            return writing.load(root, bundle, replace, progress)
        finally:
            self._wrote()

    def check(self, repair: bool = False) -> writing.CheckReport:
        """Verify every model's tables, ids, index, checksums and values: a report with
        ``ok``, ``errors`` (each with ``message`` and ``fix``) and ``to_json()``. ``repair``
        (a handle opened with ``write=True``) also fixes what it can without the model."""
        if repair:
            root = self._writing("repair")
            try:
                return writing.check(root, repair=True)
            finally:
                self._wrote()
        if isinstance(self.reader, StoreReader) and not writing.is_tree(self._source):
            return writing.check(self.reader.dir.root)  # a bundle: the atlas it was loaded into
        return writing.check(self._source)

    def _writing(self, what: str) -> str | os.PathLike[str]:
        """The atlas directory to write to; the reader is closed while it changes."""
        if not self.writable:
            raise AtlasError(f"cannot {what}: this atlas was opened read-only: open it with "
                             "write=True")  # fmt: skip
        if self._closed:
            raise AtlasError(f"the atlas handle for {self.location} is closed")
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        return self._source

    def _wrote(self) -> None:
        self._reader = None  # the next read reopens it, seeing the new catalog

    def edit(
        self,
        model_id: str,
        edits: dict[int, float] | list[tuple[int, float]],
        prompts: list[tuple[str, str]],
        device: str = "auto",
    ) -> Any:
        """Boot ``model_id``, apply ``W' = W + Σ eps_i σ_i u_i v_iᵀ`` for ``{direction_id: eps}``
        and measure each (prompt, target) before and after (an ``query.edit.EditReport``).
        The model's weights are restored bit for bit afterwards."""
        for _, eps in edit_pairs(edits):  # before the model and torch are loaded
            check_eps(eps)
        check_editable(self.reader, model_id)
        from query.edit import measure_edit

        return measure_edit(self.reader, model_id, edits, prompts, device)

    def edit_refusal(self, model_id: str) -> str | None:
        """Why :meth:`edit` would refuse ``model_id`` whatever the edit (it is not a causal
        language model), or None: for an interface that offers edits."""
        return edit_refusal(self.reader, model_id)

    def _call(self, work: Any, timeout: float | None) -> Any:
        """``work()`` as one stoppable unit (``atlas.core.cancel``): Ctrl-C stops it, and so
        does ``timeout``, without a thread of its own."""
        with stoppable(Deadline.after(timeout)):
            return work()

    def close(self) -> None:
        """Close the handle; reading or writing through it afterwards says it is closed."""
        self._closed = True
        if self._reader is not None:
            self._reader.close()  # kept, closed: a later call says the handle is closed

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Atlas {self.location!r}: {len(self.model_ids())} models>"


class CompositionTrace(list[dict[str, Any]]):
    """A composition trace's records (``query.circuits.composition_trace``), with notes."""

    def __init__(self, rows: list[dict[str, Any]], notes: list[str]):
        super().__init__(rows)
        self.notes = notes


def _open_reader(
    location: str | os.PathLike[str], write: bool, memory_limit: int | str | None
) -> Reader:
    reader = open_reader(location, write=write, memory_limit=memory_limit)
    for model_id, why in reader.damaged.items():
        warnings.warn(f"model {model_id!r} left out: {why}", AtlasWarning, stacklevel=4)
    for note in reader.notes:
        warnings.warn(note, AtlasWarning, stacklevel=4)
    return reader


def _empty_note(min_score: float, direction: int | None) -> str:
    """Why a search that could match something found nothing."""
    if min_score > 0:
        return f"no direction scored |cos| >= {min_score:g}"
    if direction is not None:
        return f"no direction but {direction} itself passes the filters or shares its tokens"
    return "no direction matched"


def coherence(*lists: str | Sequence[str], wait: bool = True) -> list[ListCoherence]:
    """The coherence of token lists, each a list of strings or one comma-separated string:
    first its percentile among random lists of as many tokens from the bundled MiniLM's
    vocabulary (``coherence_pct``), then the raw score, P(a lenient judge names a theme)
    (``coherence``). Needs no atlas. The first list of a length computes that length's null
    of random lists (about a minute, then cached on the machine); ``wait=False`` starts it
    and raises :class:`NotReady` instead of waiting. ::

        atlas.coherence("fire, flame, smoke, burning, blaze, heat")[0].coherence_pct  # 100.0
    """
    return list_coherence(lists, wait=wait)
