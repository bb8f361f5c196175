"""The ingest job: a model streamed one transformer block at a time into a new store.

::

    boot     the model's configuration, tokenizer, unembedding and block 0 (ingest.blocks)
    blocks   for each block, three stages:
               load      the block's weights, processed
               compute   decompose, project through W_U, assemble rows, score
               write     DuckDB rows and the block's index shard
    finish   the models row, token-space bags, unembedding, manifest; publish

On a GPU the stages overlap, so that the GPU stays busy: block i+1 is loaded (a background
thread) while block i is computed (this thread) and block i-1 written (another thread). On the
CPU they run in turn: the compute stage already uses every core, and threads beside it would
only take cores from it (measured: a third slower on 2 cores).

Peak memory is about one block in each stage plus the unembedding, whatever the number of
layers. Ids are laid out kind by kind, layer by layer, as a whole-model ingest lays them out,
so streaming changes nothing in the atlas. Nothing is visible to readers until the final
publish (``atlas.core.publish``): an interrupted or failed ingest, at any block, leaves the
atlas exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import queue
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from atlas.core.contract import SIDES_OF
from atlas.core.errors import AtlasError
from atlas.core.indexes import index_type_for
from atlas.core.layout import AtlasDir, dir_size
from atlas.core.publish import (
    IdRange,
    check_model_id,
    publish,
    refuse_existing,
    reserve_ids,
    store_record,
)
from atlas.core.store import writing_store
from atlas.core.tokens import display_vocabulary, normalized_form
from atlas.core.versions import COMPUTE_LIBRARIES, STORAGE_LIBRARIES, library_versions
from ingest.assemble import AtlasRows, IdBase, assemble, residual_vectors
from ingest.blocks import ModelInfo, open_blocks
from ingest.coherence.stage import CoherenceStage, attach
from ingest.decompose import MatrixGroup, OvMethod, decompose, ov_factored
from ingest.loading import LoadedModel, resolve_device, resolve_spec
from ingest.options import IngestOptions
from ingest.project import project
from ingest.weights import ModelWeights, extract_weights

__all__ = ["IngestOptions", "IngestReport", "ingest"]
STAGES = ("boot", "load", "decompose", "project", "score", "write", "finish")


@dataclass
class IngestReport:
    model_id: str
    counts: dict[str, int]
    device: str = "cpu"
    stage_seconds: dict[str, float] = field(default_factory=dict)  # busy time per stage
    wall_seconds: float = 0.0
    # seconds the compute stage waited: for the next block to load, for the writer to drain
    waiting: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float = 0.0
    size_bytes: int = 0
    skipped: list[str] = field(default_factory=list)


class Blocks:
    """What the job reads a model from: its identity, shape, unembedding and blocks."""

    spec: str
    default_id: str
    source: str
    vocabulary: list[str]
    info: ModelInfo
    n_blocks: int
    processing: str

    def unembedding(self) -> torch.Tensor:
        raise NotImplementedError

    def block(self, i: int) -> ModelWeights:
        raise NotImplementedError


class StreamedBlocks(Blocks):
    """A MODEL argument read block by block (``ingest.blocks.BlockLoader``)."""

    def __init__(self, options: IngestOptions):
        spec = resolve_spec(options.model)
        self.spec, self.default_id, self.source = spec.spec, spec.default_id, spec.source
        self._loader = open_blocks(spec, options.dtype, options.processing)
        self.vocabulary, self.info = self._loader.vocabulary, self._loader.info
        self.n_blocks, self.processing = self._loader.n_blocks, options.processing

    def unembedding(self) -> torch.Tensor:
        return self._loader.unembedding()

    def block(self, i: int) -> ModelWeights:
        return self._loader.block(i)


class BridgeBlocks(Blocks):
    """A model a Python caller booted (or edited) as a whole: its blocks are slices of it."""

    def __init__(self, loaded: LoadedModel):
        cfg = loaded.bridge.cfg
        self.spec, self.default_id, self.source = loaded.spec, loaded.default_id, loaded.source
        self.vocabulary = loaded.vocabulary
        self._weights = extract_weights(loaded.bridge, "cpu")
        self.n_blocks = int(cfg.n_layers)
        self.info = ModelInfo(
            architecture=str(getattr(cfg, "original_architecture", None) or cfg.architecture),
            n_layers=int(cfg.n_layers),
            n_heads=cfg.n_heads,
            n_kv_heads=getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
            d_model=cfg.d_model,
            d_head=cfg.d_head,
            d_mlp=cfg.d_mlp,
            d_vocab=cfg.d_vocab,
            gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
            processing_applied=loaded.processing_applied,
        )
        self.processing = loaded.processing

    def unembedding(self) -> torch.Tensor:
        return self._weights.W_U

    def block(self, i: int) -> ModelWeights:
        w = self._weights
        mlp = {kind: m[i : i + 1] for kind, m in w.mlp.items()}
        return ModelWeights(w.W_V[i : i + 1], w.W_O[i : i + 1], mlp, w.W_U, w.skipped)


def default_model_id(spec: str) -> str:
    """The model_id an ingest uses when --name is not given (known before booting)."""
    from ingest.options import BUNDLED, RANDOM_PREFIX

    if spec == BUNDLED or spec.startswith(RANDOM_PREFIX):
        return spec
    path = Path(spec).expanduser()
    return path.resolve().name if path.exists() else spec


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ingest(
    root: str | Path,
    options: IngestOptions,
    loaded: LoadedModel | None = None,
    ov_method: OvMethod = ov_factored,
    log: Callable[[str], None] = _stderr,
    progress: bool = True,
) -> IngestReport:
    """Decompose one model into the atlas at ``root``, one block at a time.

    ``loaded`` lets Python callers ingest a whole bridge they built or edited themselves;
    otherwise ``options.model`` is streamed from its files. ``ov_method`` exists for the
    full-SVD baseline and its tests.
    """
    started = time.perf_counter()
    atlas_dir = AtlasDir(root)
    atlas_dir.ensure_writable()
    model_id = check_model_id(
        options.model_id
        if options.model_id is not None
        else (loaded.default_id if loaded else default_model_id(options.model))
    )
    refuse_existing(atlas_dir, [model_id], options.replace, "--name")
    device = resolve_device(options.device)
    report = IngestReport(model_id=model_id, counts={}, device=device)
    timer = _Timer(report)

    log(f"[1/3] boot      {options.model} on {device} ({options.processing} weights)")
    with timer("boot"):
        blocks: Blocks = BridgeBlocks(loaded) if loaded else StreamedBlocks(options)
        W_U = blocks.unembedding().to(device)
        first = _Computed(0, blocks.block(0), device, options, ov_method)
        layout = IdLayout.plan(first.groups, blocks.n_blocks)
    report.skipped = list(first.weights.skipped)
    for message in report.skipped:
        log(f"{'':>15} skipped: {message}")
    (ids,) = reserve_ids(atlas_dir, [(layout.n_directions, layout.n_matrices)])
    layout.place(ids)
    index_type = index_type_for(layout.n_directions, options.exact_max)
    log(
        f"{'':>15} {blocks.n_blocks} blocks, {layout.n_directions:,} directions, {index_type} index"
    )

    with atlas_dir.staging() as staging, writing_store(atlas_dir.root):
        vocab = vocabulary_table(model_id, blocks.vocabulary)
        coherence = None
        if options.coherence:
            with timer("score"):
                coherence = _coherence_stage(model_id, vocab, W_U, options.top_k)
        log("[2/3] blocks    load, decompose, project and write one block at a time")
        # beside a GPU's compute the writer keeps to one core; on the CPU it writes alone
        threads = None if device == "cpu" else 1
        builder = _open_builder(staging, blocks.info.d_model, index_type, vocab, threads)
        try:
            counts = _run_blocks(
                blocks, first, W_U, vocab, layout, builder, coherence, options, model_id,
                timer, ov_method, log, progress,
            )  # fmt: skip
            report.counts = counts
            log("[3/3] finish    token-space bags, manifest, publish")
            with timer("finish"):
                record = store_record(model_id, layout.used(counts), blocks.spec)
                report.wall_seconds = round(time.perf_counter() - started, 3)
                row = _model_row(model_id, blocks, options, report, index_type)
                null = coherence.null if coherence else None
                builder.finish(row, null, W_U.cpu().numpy(), record)
        finally:
            builder.close()
        catalog = publish(atlas_dir, [(model_id, staging, layout.used(counts))], options.replace)
    report.wall_seconds = round(time.perf_counter() - started, 3)
    report.peak_rss_mb = _peak_rss_mb()
    if device == "cuda":
        report.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    report.size_bytes = dir_size(atlas_dir.store_path(catalog.models[model_id]))
    return report


class _Timer:
    """Adds up the busy seconds of each stage (stages overlap in the pipeline)."""

    def __init__(self, report: IngestReport):
        self.report = report
        self.lock = threading.Lock()

    def __call__(self, stage: str) -> _Span:
        return _Span(self, stage)

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            total = self.report.stage_seconds.get(stage, 0.0) + seconds
            self.report.stage_seconds[stage] = round(total, 3)


class _Span:
    def __init__(self, timer: _Timer, stage: str):
        self.timer, self.stage = timer, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        if self.timer.report.device == "cuda":
            torch.cuda.synchronize()
        self.timer.add(self.stage, time.perf_counter() - self.start)


@dataclass
class IdLayout:
    """Where each block's ids go: kind by kind (ov, then each MLP kind), layer by layer within a
    kind, as a whole-model ingest numbers them."""

    kinds: list[str]
    directions: dict[str, int]  # per block
    matrices: dict[str, int]  # per block
    n_blocks: int
    first_direction_id: int = 0
    first_matrix_id: int = 0

    @classmethod
    def plan(cls, groups: list[MatrixGroup], n_blocks: int) -> IdLayout:
        return cls(
            kinds=[g.kind for g in groups],
            directions={g.kind: _n_directions(g) for g in groups},
            matrices={g.kind: int(g.svd.S.shape[0]) for g in groups},
            n_blocks=n_blocks,
        )

    @property
    def n_directions(self) -> int:
        return self.n_blocks * sum(self.directions.values())

    @property
    def n_matrices(self) -> int:
        return self.n_blocks * sum(self.matrices.values())

    def place(self, ids: IdRange) -> None:
        self.first_direction_id, self.first_matrix_id = ids.first_direction_id, ids.first_matrix_id

    def bases(self, block: int, groups: list[MatrixGroup]) -> list[IdBase]:
        shape = {g.kind: (_n_directions(g), int(g.svd.S.shape[0])) for g in groups}
        if [g.kind for g in groups] != self.kinds or any(
            shape[k] != (self.directions[k], self.matrices[k]) for k in self.kinds
        ):
            raise AtlasError(
                f"block {block} differs in shape from block 0; models whose blocks differ "
                "(mixed dense and mixture-of-experts layers, say) are not supported"
            )
        bases, d, m = [], self.first_direction_id, self.first_matrix_id
        for kind in self.kinds:
            per_d, per_m = self.directions[kind], self.matrices[kind]
            bases.append(IdBase(m + block * per_m, d + block * per_d))
            d, m = d + self.n_blocks * per_d, m + self.n_blocks * per_m
        return bases

    def used(self, counts: dict[str, int]) -> IdRange:
        return IdRange(
            self.first_direction_id, counts["directions"], self.first_matrix_id, counts["matrices"]
        )


def _n_directions(g: MatrixGroup) -> int:
    n_mat, rank = g.svd.S.shape
    return int(n_mat * rank * len(SIDES_OF[g.kind]))


class _Computed:
    """One block decomposed (the compute stage's first step)."""

    def __init__(
        self, i: int, weights: ModelWeights, device: str, options: IngestOptions, ov: OvMethod
    ):
        self.i, self.weights = i, weights
        on_device = ModelWeights(
            weights.W_V.to(device),
            weights.W_O.to(device),
            {k: m.to(device) for k, m in weights.mlp.items()},
            weights.W_U,
            weights.skipped,
        )
        self.groups = decompose(on_device, options.max_rank, ov, first_layer=i)


def _run_blocks(
    blocks: Blocks,
    first: _Computed,
    W_U: torch.Tensor,
    vocab: pa.Table,
    layout: IdLayout,
    builder: Any,
    coherence: CoherenceStage | None,
    options: IngestOptions,
    model_id: str,
    timer: _Timer,
    ov_method: OvMethod,
    log: Callable[[str], None],
    progress: bool,
) -> dict[str, int]:
    """The three-stage pipeline over every block; returns the row counts written."""
    report = timer.report
    tokens = vocab["token"].combine_chunks()
    display = vocab["token_display"].combine_chunks()
    counts = dict.fromkeys(("matrices", "directions", "top_tokens", "top_neurons"), 0)

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
            if i == 0:
                computed = first
            else:
                waited = time.perf_counter()
                weights = loader.next()
                report.waiting["for_blocks"] = round(
                    report.waiting.get("for_blocks", 0.0) + time.perf_counter() - waited, 3
                )
                with timer("decompose"):
                    computed = _Computed(i, weights, report.device, options, ov_method)
            with timer("project"):
                vectors = residual_vectors(computed.groups)
                scores = project(vectors, W_U, options.top_k)
                rows = assemble(
                    model_id, computed.groups, vectors, scores, tokens, display,
                    layout.bases(i, computed.groups), options.gap_tolerance, options.top_k,
                )  # fmt: skip
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


def _open_builder(
    staging: Path, d_model: int, index_type: str, vocab: pa.Table, threads: int | None
) -> Any:
    from ingest.writer import StoreBuilder

    return StoreBuilder(staging, d_model, index_type, vocab, threads)


def _coherence_stage(model_id: str, vocab: pa.Table, W_U: torch.Tensor, top_k: int) -> Any:
    """The coherence scorer with its null (``None`` columns when fewer than two tokens are
    kept: a list of one token has no coherence)."""
    if top_k < 2:
        return None
    from ingest.coherence.scorer import Scorer

    display = vocab["token_display"].to_pylist()
    return CoherenceStage(model_id, display, W_U, top_k, Scorer())


def vocabulary_table(model_id: str, raw_tokens: list[str]) -> pa.Table:
    return pa.table(
        {
            "model_id": [model_id] * len(raw_tokens),
            "token_id": np.arange(len(raw_tokens), dtype=np.int32),
            "token": raw_tokens,
            "token_display": display_vocabulary(raw_tokens),
            "token_norm": [normalized_form(t) for t in raw_tokens],
        }
    )


def _peak_rss_mb() -> float:
    """The process's peak resident memory, in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model_row(
    model_id: str, blocks: Blocks, options: IngestOptions, report: IngestReport, index_type: str
) -> dict[str, Any]:
    info = blocks.info
    return {
        "model_id": model_id,
        "spec": blocks.spec,
        "source": blocks.source,
        "architecture": info.architecture,
        "n_layers": info.n_layers,
        "n_heads": info.n_heads,
        "n_kv_heads": info.n_kv_heads,
        "d_model": info.d_model,
        "d_head": info.d_head,
        "d_mlp": info.d_mlp,
        "d_vocab": info.d_vocab,
        "gated_mlp": info.gated_mlp,
        "processing": blocks.processing,
        "processing_applied": info.processing_applied,
        "top_k": options.top_k,
        "max_rank": options.max_rank,
        "gap_tolerance": options.gap_tolerance,
        "index_type": index_type,
        "skipped": report.skipped,
        "device": report.device,
        "weight_dtype": options.dtype,
        "dtype": f"weights {options.dtype}; SVD float32, OV cores float64",
        "versions": library_versions(STORAGE_LIBRARIES + COMPUTE_LIBRARIES),
        "stage_seconds": {**report.stage_seconds, "wall": report.wall_seconds},
        "n_matrices": report.counts["matrices"],
        "n_directions": report.counts["directions"],
        "ingested_at": dt.datetime.now(dt.UTC),
    }
