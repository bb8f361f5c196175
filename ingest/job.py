"""The ingest job: one model streamed one transformer block at a time into a new store.

::

    boot     the model's configuration, tokenizer, unembedding and block 0 (ingest.blocks);
             its ids planned from block 0's shapes (ingest.ids) and reserved
    blocks   for each block (ingest.pipeline):
               load      the block's weights, processed
               compute   decompose, project through W_U, assemble rows, score
               write     DuckDB rows and the block's index vectors
    finish   the models row, token-space bags, unembedding, manifest; publish

Peak memory is about one block in each stage plus the unembedding, whatever the number of
layers. Nothing is visible to readers until the final publish (``atlas.core.publish``): an
interrupted or failed ingest, at any block, leaves the atlas exactly as it was.

The steps also run apart, for a job of many models on many machines (``ingest.jobs``):
:func:`plan` boots a model and says how many ids it needs, :func:`build_in` makes its store
in a folder with the ids the job reserved for it, and the job publishes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from atlas.core.contents import CONTENTS_VERSION
from atlas.core.indexes import index_type_for
from atlas.core.layout import AtlasDir, dir_size
from atlas.core.model_ids import check_model_id
from atlas.core.model_lock import model_lock
from atlas.core.progress import Progress, no_progress
from atlas.core.publish import (
    IdRange,
    publish,
    refuse_existing,
    reserve_ids,
    store_record,
)
from atlas.core.store import writing_store
from atlas.core.tokens import display_vocabulary, normalized_form
from atlas.core.versions import COMPUTE_LIBRARIES, STORAGE_LIBRARIES, library_versions
from atlas.models.loading import LoadedModel, local_path, resolve_device
from ingest.coherence_stage import CoherenceStage
from ingest.decompose import OvMethod, ov_factored
from ingest.ids import IdLayout
from ingest.options import BUNDLED, RANDOM_PREFIX, IngestOptions
from ingest.pipeline import BootedModel, run_blocks
from ingest.report import IngestReport, Timer, peak_rss_mb
from ingest.sources import Blocks, BridgeBlocks, StreamedBlocks
from ingest.weights import require_finite

__all__ = ["IngestOptions", "IngestReport", "build_in", "ingest", "plan"]

Log = Callable[[str], None]


def default_model_id(spec: str) -> str:
    """The model_id an ingest uses when --name is not given (known before booting)."""
    if spec == BUNDLED or spec.startswith(RANDOM_PREFIX):
        return spec
    path = local_path(spec)
    if path.exists() or spec.startswith(("/", ".", "~")):
        # a folder's name (a missing folder's too: booting it says it is missing)
        return path.resolve().name
    return spec  # a hub name, org/name


def model_id_of(options: IngestOptions, loaded: LoadedModel | None = None) -> str:
    """The model_id ``options`` ingest under, checked."""
    if options.model_id is not None:
        return check_model_id(options.model_id)
    return check_model_id(loaded.default_id if loaded else default_model_id(options.model))


def _quiet(_message: str) -> None:
    """No stage lines: the library prints nothing unless its caller asks (``log``)."""


def ingest(
    root: str | Path,
    options: IngestOptions,
    loaded: LoadedModel | None = None,
    ov_method: OvMethod = ov_factored,
    log: Log = _quiet,
    progress: Progress = no_progress,
) -> IngestReport:
    """Decompose one model into the atlas at ``root``, one block at a time; ``log`` is told
    each stage's line, ``progress`` the blocks done (``atlas.core.progress``).

    ``loaded`` lets Python callers ingest a whole bridge they built or edited themselves;
    otherwise ``options.model`` is streamed from its files. ``ov_method`` exists for the
    full-SVD baseline and its tests.
    """
    atlas_dir = AtlasDir(root)
    atlas_dir.ensure_writable()
    model_id = model_id_of(options, loaded)
    with model_lock(atlas_dir, model_id):  # a second ingest of it is refused before booting
        refuse_existing(atlas_dir, [model_id], options.replace, "`name`")
        model = boot(model_id, options, loaded, ov_method, log)
        (ids,) = reserve_ids(atlas_dir, [(model.layout.n_directions, model.layout.n_matrices)])
        with atlas_dir.staging() as staging:
            used = build(staging, model, ids, atlas_dir.root, log, progress)
            catalog = publish(atlas_dir, [(model_id, staging, used)], options.replace)
    return _finished(model, atlas_dir.store_path(catalog.models[model_id]))


def plan(options: IngestOptions, log: Log = _quiet) -> tuple[str, int, int]:
    """``(model_id, n_directions, n_matrices)``: what a model needs of an atlas's ids, learnt
    by booting it (its configuration, unembedding and first block; nothing is decomposed)."""
    model_id = model_id_of(options)
    layout = boot(model_id, options, log=log).layout
    return model_id, layout.n_directions, layout.n_matrices


def build_in(
    folder: Path, atlas_root: Path, options: IngestOptions, ids: IdRange, log: Log = _quiet
) -> IngestReport:
    """Make one model's store in the new folder ``folder`` with the ids a job reserved for it
    (:func:`plan` sized them), without publishing it: what a job's worker runs."""
    folder.mkdir()  # first: a job whose folder is gone fails here, before any boot
    model = boot(model_id_of(options), options, log=log)
    build(folder, model, ids, atlas_root, log, no_progress)
    return _finished(model, folder)


def boot(
    model_id: str,
    options: IngestOptions,
    loaded: LoadedModel | None = None,
    ov_method: OvMethod = ov_factored,
    log: Log = _quiet,
) -> BootedModel:
    """Open the model's blocks, read its unembedding and first block, and plan its ids."""
    started = time.perf_counter()
    device = resolve_device(options.device)
    timer = Timer(IngestReport(model_id=model_id, counts={}, device=device))
    log(f"[1/3] boot      {options.model} on {device} ({options.processing} weights)")
    with timer("boot"):
        blocks: Blocks = BridgeBlocks(loaded) if loaded else StreamedBlocks(options)
        W_U, W_E = blocks.unembedding().to(device), blocks.embedding().to(device)
        require_finite({"W_U": W_U, "W_E": W_E}, "the model's")
        first = blocks.block(0)
        layout = IdLayout.plan(first, blocks.n_blocks, options.max_rank)
    timer.report.skipped = list(first.skipped)
    for message in first.skipped:
        log(f"{'':>15} skipped: {message}")
    return BootedModel(
        model_id, options, blocks, W_U, W_E, first, layout, timer, ov_method, started
    )


def build(
    staging: Path,
    model: BootedModel,
    ids: IdRange,
    atlas_root: Path,
    log: Log,
    progress: Progress,
) -> IdRange:
    """Compute every block of ``model`` and write its store into ``staging`` with ``ids``;
    returns the ids it used. A failure to write is one clear line (``writing_store``)."""
    options, layout, timer, report = model.options, model.layout, model.timer, model.timer.report
    layout.place(ids)
    index_type = index_type_for(layout.n_directions, options.exact_max)
    log(
        f"{'':>15} {model.blocks.n_blocks} blocks, {layout.n_directions:,} directions, "
        f"{index_type} index"
    )
    with writing_store(atlas_root):
        vocab = vocabulary_table(model.model_id, model.blocks.vocabulary)
        coherence = None
        if options.coherence:
            with timer("score"):
                coherence = _coherence_stage(model.model_id, vocab, model.W_U, options.top_k)
        log("[2/3] blocks    load, decompose, project and write one block at a time")
        # beside a GPU's compute the writer keeps to one core; on the CPU it writes alone
        threads = None if report.device == "cpu" else 1
        builder = _open_builder(staging, model.blocks.info.d_model, index_type, vocab, threads)
        try:
            report.counts = run_blocks(model, vocab, builder, coherence, progress)
            log("[3/3] finish    token-space bags, manifest, publish")
            with timer("finish"):
                used = layout.used(report.counts)
                record = store_record(model.model_id, used, model.blocks.spec)
                report.wall_seconds = round(time.perf_counter() - model.started, 3)
                row = _model_row(model.model_id, model.blocks, options, report, index_type)
                null = coherence.null if coherence else None
                builder.finish(row, null, model.W_U.cpu().numpy(), record)
        finally:
            builder.close()
    return used


def _finished(model: BootedModel, store: Path) -> IngestReport:
    report = model.timer.report
    report.wall_seconds = round(time.perf_counter() - model.started, 3)
    report.peak_rss_mb = peak_rss_mb()
    if report.device == "cuda":
        report.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    report.size_bytes = dir_size(store)
    return report


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
    from atlas.models.coherence import Scorer

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
        "positional_embedding": info.positional_embedding,
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
        "format_version": CONTENTS_VERSION,
        "ingested_at": dt.datetime.now(dt.UTC),
    }
