"""`svd-atlas ingest`."""

from __future__ import annotations

from typing import Any

import click

from ingest.options import (
    DEFAULT_EXACT_MAX,
    DEFAULT_GAP_TOLERANCE,
    DEFAULT_TOP_K,
    DEVICES,
    DTYPES,
    PROCESSING_CHOICES,
    IngestOptions,
)
from ingest.random_models import RANDOM_SHAPES


@click.command(
    help=f"""Decompose MODEL into the atlas.

    MODEL is `minilm` (bundled, offline), a local Hugging Face model folder, a hub name
    (needs a network), or random:{"|".join(RANDOM_SHAPES)} (random weights of real shapes).
    """
)
@click.argument("model")
@click.option("--name", help="model_id to store it under (default: derived from MODEL).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--processing",
    type=click.Choice(PROCESSING_CHOICES),
    default="raw",
    show_default=True,
    help="raw weights, or TransformerLens's fold_ln/centering where supported.",
)
@click.option(
    "--top-k",
    type=click.IntRange(1, 1000),
    default=DEFAULT_TOP_K,
    show_default=True,
    help="Tokens kept per polarity (and neurons per MLP direction).",
)
@click.option(
    "--max-rank",
    type=click.IntRange(1),
    default=None,
    help="Singular triples kept per matrix (default: all).",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="float32",
    show_default=True,
    help="dtype the model is loaded in.",
)
@click.option(
    "--gap-tol",
    type=click.FloatRange(0, 1),
    default=DEFAULT_GAP_TOLERANCE,
    show_default=True,
    help="Relative singular-value gap below which directions are flagged degenerate.",
)
@click.option(
    "--exact-max",
    type=click.IntRange(1),
    default=DEFAULT_EXACT_MAX,
    show_default=True,
    help="Models with more directions (and at least 1024) get an approximate index: a PQ scan "
    "with exact re-ranking.",
)
@click.option(
    "--coherence",
    is_flag=True,
    help="Also score every direction's coherence (one sentence-encoder pass per new token "
    "string; cached across runs).",
)
@click.option("--replace", is_flag=True, help="Replace a model_id that is already in the atlas.")
@click.pass_obj
def ingest(
    obj: dict[str, Any],
    model: str,
    name: str | None,
    device: str,
    processing: str,
    top_k: int,
    max_rank: int | None,
    dtype: str,
    gap_tol: float,
    exact_max: int,
    coherence: bool,
    replace: bool,
) -> None:
    from atlas.cli.summary import print_ingest_summary
    from ingest.job import ingest as run_ingest

    options = IngestOptions(
        model=model,
        model_id=name,
        device=device,
        processing=processing,
        top_k=top_k,
        max_rank=max_rank,
        dtype=dtype,
        replace=replace,
        gap_tolerance=gap_tol,
        exact_max=exact_max,
        coherence=coherence,
    )
    report = run_ingest(obj["atlas"], options)
    print_ingest_summary(obj["atlas"], report)


COMMANDS = [ingest]
