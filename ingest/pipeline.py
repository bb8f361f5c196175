"""The block pipeline: load, compute and write each block of a model in turn.

On a GPU the stages overlap, so that the GPU stays busy: block i+1 is loaded (a background
thread) while block i is computed (this thread) and block i-1 written (another thread). On the
CPU they run in turn: the compute stage already uses every core, and threads beside it would
only take cores from it (measured: a third slower on 2 cores).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from atlas.core.errors import AtlasError
from ingest.assemble import AtlasRows, assemble, residual_vectors
from ingest.coherence_stage import CoherenceStage, attach
from ingest.composition import CompositionStage
from ingest.decompose import OvMethod, decompose
from ingest.ids import IdLayout
from ingest.options import IngestOptions
from ingest.project import project
from ingest.report import Timer
from ingest.sources import Blocks
from ingest.weights import ModelWeights, on_device


class Computed:
    """One block decomposed (the compute stage's first step)."""

    def __init__(
        self, i: int, weights: ModelWeights, device: str, options: IngestOptions, ov: OvMethod
    ):
        self.i, self.weights = i, weights
        self.groups = decompose(on_device(weights, device), options.max_rank, ov, first_layer=i)


@dataclass
class BootedModel:
    """A model booted for ingest: where its blocks come from, its unembedding on the compute
    device, its first block's weights (read at boot) and the plan of its ids."""

    model_id: str
    options: IngestOptions
    blocks: Blocks
    W_U: torch.Tensor
    first_block: ModelWeights | None
    layout: IdLayout
    timer: Timer
    ov_method: OvMethod
    started: float  # perf_counter() when the ingest began


def run_blocks(
    model: BootedModel,
    vocab: pa.Table,
    builder: Any,
    coherence: CoherenceStage | None,
    log: Callable[[str], None],
    progress: bool,
) -> dict[str, int]:
    """The three-stage pipeline over every block; returns the row counts written."""
    blocks, options, timer, layout = model.blocks, model.options, model.timer, model.layout
    report = timer.report
    tokens = vocab["token"].combine_chunks()
    display = vocab["token_display"].combine_chunks()
    counts = dict.fromkeys(("matrices", "directions", "top_tokens", "top_neurons"), 0)
    composition = CompositionStage(model.model_id, blocks.info.d_model)

    def load() -> Iterator[ModelWeights]:
        for i in range(1, blocks.n_blocks):
            with timer("load"):
                weights = blocks.block(i)
            yield weights

    def write(rows: AtlasRows) -> None:
        with timer("write"):
            builder.add_block(rows)

    started = time.perf_counter()
    overlap = report.device != "cpu"
    loader = _Prefetch(load(), background=overlap)
    writer = _Drain(write, background=overlap)
    try:
        for i in range(blocks.n_blocks):
            if i == 0 and model.first_block is not None:
                weights, model.first_block = model.first_block, None
            else:
                waited = time.perf_counter()
                weights = loader.next()
                report.waiting["for_blocks"] = round(
                    report.waiting.get("for_blocks", 0.0) + time.perf_counter() - waited, 3
                )
            with timer("decompose"):
                computed = Computed(i, weights, report.device, options, model.ov_method)
            with timer("project"):
                vectors = residual_vectors(computed.groups)
                scores = project(vectors, model.W_U, options.top_k)
                rows = assemble(
                    model.model_id, computed.groups, vectors, scores, tokens, display,
                    layout.bases(i, computed.groups), options.gap_tolerance, options.top_k,
                )  # fmt: skip
            with timer("compose"):
                rows.composition, rows.composition_pairs = composition.add_block(
                    computed.groups, layout.bases(i, computed.groups)
                )
            if coherence is None:
                attach(rows, None)
            else:
                with timer("score"):
                    attach(rows, coherence.score(scores, rows.directions))
            for name in counts:
                counts[name] += getattr(rows, name).num_rows
            waited = time.perf_counter()
            writer.put(rows)
            report.waiting["for_writer"] = round(
                report.waiting.get("for_writer", 0.0) + time.perf_counter() - waited, 3
            )
            if progress:
                _log_progress(log, i + 1, blocks.n_blocks, time.perf_counter() - started)
        writer.close()
    finally:
        loader.stop()
        writer.stop()
    return counts


def _log_progress(log: Callable[[str], None], done: int, total: int, elapsed: float) -> None:
    left = total - done
    remaining = f", about {elapsed / done * left:.0f} s remaining" if left else ""
    log(f"{'':>15} block {done}/{total} done in {elapsed:.1f} s; {left} left{remaining}")


class _Prefetch:
    """Runs an iterator in a background thread, one item ahead (a queue of one); or, not in the
    ``background``, item by item when asked."""

    _END = object()

    def __init__(self, items: Iterator[Any], background: bool = True):
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, args=(items,), daemon=True)
            self._thread.start()

    def _run(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer
            self._error = exc
        self._queue.put(self._END)

    def next(self) -> Any:
        item = next(self._items, self._END) if self._thread is None else self._queue.get()
        if item is self._END:
            if self._error is not None:
                raise self._error
            raise AtlasError("the block loader ended early")
        return item

    def stop(self) -> None:
        self._stop.set()
        while self._thread is not None and self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                continue


class _Drain:
    """Consumes items in a background thread (a queue of one); errors surface on the next
    ``put`` or at ``close``. Not in the ``background``, each item is consumed as it is put."""

    _END = object()

    def __init__(self, consume: Callable[[Any], None], background: bool = True):
        self._consume = consume
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, args=(consume,), daemon=True)
            self._thread.start()

    def _run(self, consume: Callable[[Any], None]) -> None:
        while (item := self._queue.get()) is not self._END:
            if self._error is None:
                try:
                    consume(item)
                except BaseException as exc:  # handed to the producer
                    self._error = exc

    def put(self, item: Any) -> None:
        self._raise()
        if self._thread is None:
            self._consume(item)
        else:
            self._queue.put(item)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(self._END)
            self._thread.join()
        self._raise()

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
