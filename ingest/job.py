"""The ingest job: boot → decompose → project → write → index → publish, with progress.

Nothing is visible to readers until the final publish (see ``atlas.core.layout``): an interrupted or
failed ingest leaves the atlas exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from atlas.core.indexes import index_type_for
from atlas.core.layout import AtlasDir, dir_size
from atlas.core.publish import check_model_id, publish, refuse_existing, reserve_ids, store_record
from atlas.core.store import writing_store
from atlas.core.tokens import display_vocabulary, normalized_form
from atlas.core.versions import COMPUTE_LIBRARIES, STORAGE_LIBRARIES, library_versions
from ingest import writer
from ingest.assemble import AtlasRows, IdBase, assemble, residual_vectors
from ingest.coherence.stage import attach, coherence_columns
from ingest.decompose import OvMethod, decompose, ov_factored
from ingest.loading import LoadedModel, load_model, resolve_device
from ingest.options import BUNDLED, RANDOM_PREFIX, IngestOptions
from ingest.project import TokenScores, project
from ingest.weights import extract_weights

STAGES = ("boot", "decompose", "project", "score", "write", "index")


@dataclass
class IngestReport:
    model_id: str
    counts: dict[str, int]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    peak_gpu_mb: dict[str, float] = field(default_factory=dict)
    size_bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    device: str = "cpu"


def default_model_id(spec: str) -> str:
    """The model_id an ingest uses when --name is not given (known before booting)."""
    if spec == BUNDLED or spec.startswith(RANDOM_PREFIX):
        return spec
    path = Path(spec).expanduser()
    return path.resolve().name if path.exists() else spec


class _Stages:
    """Times each stage, records peak memory after it, and reports progress on stderr."""

    def __init__(self, report: IngestReport, log: Callable[[str], None], names: list[str]):
        self.report, self.log, self.names = report, log, names

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.log(f"[{self.names.index(name) + 1}/{len(self.names)}] {name:<9} {what}")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _reset_peak_rss()
        start = time.perf_counter()
        yield
        if self.report.device == "cuda":
            torch.cuda.synchronize()
            self.report.peak_gpu_mb[name] = torch.cuda.max_memory_allocated() / 2**20
        self.report.stage_seconds[name] = round(time.perf_counter() - start, 3)
        self.report.peak_rss_mb[name] = _peak_rss_mb()
        self.log(f"{'':>15} done in {self.report.stage_seconds[name]:.2f} s")


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass  # elsewhere the peak is the process's peak so far


def _peak_rss_mb() -> float:
    """Peak resident memory since the last reset, in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    """Decompose one model into the atlas at ``root``.

    ``loaded`` lets Python callers ingest a bridge they built or edited themselves; otherwise
    ``options.model`` is booted. ``ov_method`` exists for the full-SVD baseline and its tests.
    The atlas's writer lock is held only to reserve ids and to publish (``atlas.core.publish``).
    """
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
    stages = _Stages(report, log, [s for s in STAGES if s != "score" or options.coherence])

    with stages.stage("boot", f"{options.model} on {device} ({options.processing} weights)"):
        if loaded is None:
            loaded = load_model(options.model, device, options.dtype, options.processing)
        weights = extract_weights(loaded.bridge, device)
        report.skipped = weights.skipped
        for message in weights.skipped:
            log(f"{'':>15} skipped: {message}")

    with atlas_dir.staging() as staging, writing_store(atlas_dir.root):
        with stages.stage("decompose", "batched SVD of every OV circuit and MLP matrix"):
            groups = decompose(weights, options.max_rank, ov_method)
            vectors = residual_vectors(groups)
        n_matrices = sum(g.svd.S.shape[0] for g in groups)
        (ids,) = reserve_ids(atlas_dir, [(vectors.shape[0], n_matrices)])
        with stages.stage("project", f"{vectors.shape[0]:,} directions through W_U"):
            scores = _project_with_progress(vectors, weights.W_U, options.top_k, progress)
            vocab = vocabulary_table(model_id, loaded.vocabulary)
            rows = assemble(
                model_id,
                groups,
                vectors,
                scores,
                vocab["token"].combine_chunks(),
                vocab["token_display"].combine_chunks(),
                IdBase(ids.first_matrix_id, ids.first_direction_id),
                options.gap_tolerance,
                options.top_k,
            )
        if options.coherence:
            with stages.stage("score", "coherence of every direction and matrix vs a null"):
                display = vocab["token_display"].to_pylist()
                _score_coherence(rows, scores, model_id, display, weights.W_U, options.top_k)
        else:
            attach(rows, None)
        cfg = loaded.bridge.cfg
        report.counts = {
            "matrices": rows.matrices.num_rows,
            "directions": rows.directions.num_rows,
            "top_tokens": rows.top_tokens.num_rows,
            "top_neurons": rows.top_neurons.num_rows,
        }
        with stages.stage("write", "DuckDB tables through Arrow, token-space bags"):
            model_row = _model_row(model_id, loaded, options, report, cfg)
            writer.write_tables(staging, model_row, rows, vocab, cfg.d_model)
            writer.write_unembedding(staging, weights.W_U.cpu().numpy())
        with stages.stage("index", "FAISS residual-space index"):
            writer.write_residual_index(staging, rows, model_row["index_type"])
        writer.record_stage_seconds(staging, report.stage_seconds)
        writer.write_manifest(staging, store_record(model_id, ids, loaded.spec))
        catalog = publish(atlas_dir, [(model_id, staging, ids)], options.replace)
    report.size_bytes = dir_size(atlas_dir.store_path(catalog.models[model_id]))
    return report


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


def _score_coherence(
    rows: AtlasRows,
    scores: TokenScores,
    model_id: str,
    display: list[str],
    W_U: torch.Tensor,
    top_k: int,
) -> None:
    """Coherence columns and the null table (all NULL when fewer than two tokens are kept)."""
    from ingest.coherence.scorer import Scorer

    columns = None
    if top_k >= 2:
        columns = coherence_columns(model_id, scores, rows.directions, display, W_U, Scorer())
    attach(rows, columns)


def _project_with_progress(vectors: torch.Tensor, W_U: torch.Tensor, k: int, progress: bool) -> Any:
    from tqdm import tqdm

    with tqdm(
        total=vectors.shape[0],
        unit="dir",
        disable=not progress,
        file=sys.stderr,
        leave=False,
        desc="               projecting",
    ) as bar:
        return project(vectors, W_U, k, on_chunk=bar.update)


def _model_row(
    model_id: str, loaded: LoadedModel, options: IngestOptions, report: IngestReport, cfg: Any
) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "spec": loaded.spec,
        "source": loaded.source,
        "architecture": str(getattr(cfg, "original_architecture", None) or cfg.architecture),
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "d_vocab": cfg.d_vocab,
        "gated_mlp": bool(getattr(cfg, "gated_mlp", False)),
        "processing": loaded.processing,
        "processing_applied": loaded.processing_applied,
        "top_k": options.top_k,
        "max_rank": options.max_rank,
        "gap_tolerance": options.gap_tolerance,
        "index_type": index_type_for(report.counts["directions"], options.exact_max),
        "skipped": report.skipped,
        "device": report.device,
        "weight_dtype": options.dtype,
        "dtype": f"weights {options.dtype}; SVD float32, OV cores float64",
        "versions": library_versions(STORAGE_LIBRARIES + COMPUTE_LIBRARIES),
        "stage_seconds": report.stage_seconds,
        "n_matrices": report.counts["matrices"],
        "n_directions": report.counts["directions"],
        "ingested_at": dt.datetime.now(dt.UTC),
    }
