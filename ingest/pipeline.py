"""The block pipeline: load, compute and write each block of a model in turn.

On a GPU the stages overlap, so that the GPU stays busy: block i+1 is loaded while block i is
computed (this thread) and block i-1 written, the two in a pool of two threads
(``concurrent.futures``). At most three blocks are in flight: one loading, one computing, one
writing; the next load starts once its block is taken, the next write once the last has ended.
A stage's failure is raised by the compute stage at its next step (:meth:`Stages.check`), and
the pool is shut down with it: a load not started is cancelled, one running ends, nothing more
starts. On the CPU the stages run in turn: the compute stage already uses every core, and
threads beside it would only take cores from it (measured: a third slower on 2 cores).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pyarrow as pa
import torch

from atlas.core.progress import Progress
from ingest.assemble import AtlasRows, assemble, embedding_readout, residual_vectors
from ingest.coherence_stage import CoherenceStage, attach
from ingest.composition import CompositionStage
from ingest.decompose import OvMethod, decompose
from ingest.ids import IdLayout
from ingest.options import IngestOptions
from ingest.project import project
from ingest.report import Timer
from ingest.sources import Blocks
from ingest.weights import ModelWeights, on_device, require_finite_block

T = TypeVar("T")
W = TypeVar("W")
R = TypeVar("R")


class Computed:
    """One block decomposed (the compute stage's first step)."""

    def __init__(
        self, i: int, weights: ModelWeights, device: str, options: IngestOptions, ov: OvMethod
    ):
        self.i, self.weights = i, weights
        self.groups = decompose(on_device(weights, device), options.max_rank, ov, first_layer=i)


@dataclass
class BootedModel:
    """A model booted for ingest: where its blocks come from, its unembedding and embedding on
    the compute device, its first block's weights (read at boot) and the plan of its ids."""

    model_id: str
    options: IngestOptions
    blocks: Blocks
    W_U: torch.Tensor
    W_E: torch.Tensor
    first_block: ModelWeights | None
    layout: IdLayout
    timer: Timer
    ov_method: OvMethod
    started: float  # perf_counter() when the ingest began

    @functools.cached_property
    def tied(self) -> bool:
        """Whether the centered embedding is the centered unembedding (a tied model): then a
        read side's tokens through W_E are those through W_U, projected once."""
        return torch.equal(self.W_E, self.W_U)  # False where the shapes differ


def run_blocks(
    model: BootedModel,
    vocab: pa.Table,
    builder: Any,
    coherence: CoherenceStage | None,
    progress: Progress,
) -> dict[str, int]:
    """The three-stage pipeline over every block; returns the row counts written.
    ``progress("blocks", done, total)`` is told as each block's rows and index vectors are
    written to the staging store."""
    blocks, options, timer, layout = model.blocks, model.options, model.timer, model.layout
    report = timer.report
    tokens = vocab["token"].combine_chunks()
    display = vocab["token_display"].combine_chunks()
    counts = dict.fromkeys(("matrices", "directions", "top_tokens", "top_neurons"), 0)
    composition = CompositionStage(model.model_id, blocks.info.d_model)

    def load(i: int) -> ModelWeights:
        if i == 0 and model.first_block is not None:  # read at boot
            weights, model.first_block = model.first_block, None
            return weights
        with timer("load"):
            return blocks.block(i)

    def compute(i: int, weights: ModelWeights, check: Callable[[], None]) -> AtlasRows:
        require_finite_block(weights, i)
        with timer("decompose"):
            computed = Computed(i, weights, report.device, options, model.ov_method)
        check()
        with timer("project"):
            vectors = residual_vectors(computed.groups)
            scores = project(vectors, model.W_U, options.top_k)
            rows = assemble(
                model.model_id, computed.groups, vectors, scores, tokens, display,
                layout.bases(i, computed.groups), options.gap_tolerance, options.top_k,
            )  # fmt: skip
            through_embedding = embedding_readout(
                rows, model.W_E, options.top_k, tokens, display, scores if model.tied else None
            )
            rows.top_tokens = pa.concat_tables([rows.top_tokens, through_embedding])
        check()
        with timer("compose"):
            rows.composition, rows.composition_pairs = composition.add_block(
                computed.groups, layout.bases(i, computed.groups)
            )
        check()
        if coherence is None:
            attach(rows, None)
        else:
            with timer("score"):
                attach(rows, coherence.score(scores, rows.directions))
        for name in counts:
            counts[name] += getattr(rows, name).num_rows
        return rows

    written = 0

    def write(rows: AtlasRows) -> None:
        nonlocal written
        with timer("write"):
            builder.add_block(rows)
        written += 1  # one writer at a time
        progress("blocks", written, blocks.n_blocks)

    def waited(what: str, seconds: float) -> None:
        total = report.waiting.get(what, 0.0) + seconds
        report.waiting[what] = round(total, 3)

    overlapped(blocks.n_blocks, load, compute, write, report.device != "cpu", waited)
    return counts


def overlapped(
    n: int,
    load: Callable[[int], W],
    compute: Callable[[int, W, Callable[[], None]], R],
    write: Callable[[R], None],
    overlap: bool,
    waited: Callable[[str, float], None] = lambda _what, _seconds: None,
) -> None:
    """``write(compute(i, load(i), check))`` for each of ``n`` blocks, the stages overlapped
    (see the module notes) or in turn. ``compute`` calls ``check()`` between its steps, which
    raises another stage's failure; ``waited(what, seconds)`` is told how long compute waited
    ``"for_blocks"`` and ``"for_writer"``."""
    with Stages(overlap) as stages:
        loading = stages.ahead(load, 0)
        writing: Future[None] | _Deferred[None] | None = None
        for i in range(n):
            weights = stages.wait(loading, "for_blocks", waited)
            if i + 1 < n:
                loading = stages.ahead(load, i + 1)
            rows = compute(i, weights, stages.check)
            if writing is not None:
                stages.wait(writing, "for_writer", waited)
            writing = stages.behind(write, rows)
        if writing is not None:
            stages.wait(writing, "for_writer", waited)


class Stages:
    """The load and write stages beside the compute stage: in a pool of two threads, or
    (without ``overlap``) on this thread, a load when its block is asked for and a write at
    once."""

    def __init__(self, overlap: bool):
        self._pool = (
            ThreadPoolExecutor(2, thread_name_prefix="svd-atlas-ingest") if overlap else None
        )
        self._running: list[Future[Any]] = []

    def ahead(self, fn: Callable[..., T], *args: Any) -> Future[T] | _Deferred[T]:
        """``fn(*args)`` started now beside compute, or run when its result is asked for."""
        if self._pool is None:
            return _Deferred(fn, args)
        return self._track(self._pool.submit(fn, *args))

    def behind(self, fn: Callable[..., T], *args: Any) -> Future[T] | _Deferred[T]:
        """``fn(*args)`` started now beside compute, or run now."""
        if self._pool is None:
            deferred = _Deferred(fn, args)
            deferred.result()
            return deferred
        return self._track(self._pool.submit(fn, *args))

    def _track(self, future: Future[T]) -> Future[T]:
        self._running = [f for f in self._running if not f.done()] + [future]
        return future

    def wait(
        self, item: Future[T] | _Deferred[T], what: str, waited: Callable[[str, float], None]
    ) -> T:
        started = time.perf_counter()
        try:
            return item.result()
        finally:
            waited(what, time.perf_counter() - started)

    def check(self) -> None:
        """Raise the first failure of a stage running beside compute."""
        for future in self._running:
            if future.done() and future.exception() is not None:
                future.result()

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._pool is not None:  # on a failure: what has not started never will
            self._pool.shutdown(wait=True, cancel_futures=True)


class _Deferred(Generic[T]):
    """A stage's work run on this thread when its result is first asked for."""

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]):
        self._fn, self._args = fn, args
        self._done = False
        self._value: T | None = None

    def result(self) -> T:
        if not self._done:
            self._value = self._fn(*self._args)
            self._done = True
        return self._value  # type: ignore[return-value]
