"""`svd-atlas ingest`: one model, or a job of many (serially or on a Ray cluster)."""

from __future__ import annotations

from typing import Any

import click

import atlas
from atlas.cli.main import stopped
from atlas.cli.numbers import FiniteFloat
from atlas.writing import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_EXACT_MAX,
    DEFAULT_GAP_TOLERANCE,
    DEFAULT_PROCESSING,
    DEFAULT_RETRIES,
    DEFAULT_TOP_K,
    DEVICES,
    DTYPES,
    LOCAL_RAY,
    PROCESSING_CHOICES,
    RANDOM_SHAPES,
    IngestFailed,
)


@click.command(
    help=f"""Decompose MODEL (or several) into the atlas.

    MODEL is `minilm` (bundled, offline), a local Hugging Face model folder, a hub name
    (needs a network), or random:{"|".join(RANDOM_SHAPES)} (random weights of real shapes).

    Several models (or --from FILE) make a job: each is published as soon as it is done, one
    that fails does not stop the others, and models already in the atlas are skipped unless
    --replace, so running the job again finishes it. --ray runs the job's models in
    parallel on a Ray cluster (pip install 'svd-atlas[ray]').
    """
)
@click.argument("models", metavar="MODEL...", nargs=-1)
@click.option(
    "--from",
    "from_file",
    type=click.File("r", encoding="utf-8"),
    help="Read models from a file, one per line as on the command line: MODEL [--name ID] "
    "(blank lines and # comments are ignored).",
)
@click.option("--name", help="model_id to store it under (default: derived from MODEL).")
@click.option("--device", type=click.Choice(DEVICES), default=DEFAULT_DEVICE, show_default=True)
@click.option(
    "--processing",
    type=click.Choice(PROCESSING_CHOICES),
    default=DEFAULT_PROCESSING,
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
    default=DEFAULT_DTYPE,
    show_default=True,
    help="dtype the model is loaded in.",
)
@click.option(
    "--gap-tol",
    type=FiniteFloat(0, 1),
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
@click.option(
    "--ray",
    is_flag=False,
    flag_value=LOCAL_RAY,
    default=None,
    metavar="[ADDRESS]",
    help="Run the models on a Ray cluster: `auto` (the cluster this machine belongs to), an "
    "address (HOST:PORT, ray://HOST:PORT), or nothing (or `local`) for a cluster on this "
    "machine. Put it after the models, or they are read as its address. The atlas must be on "
    "storage every node sees.",
)
@click.option(
    "--gpus-per-task",
    type=FiniteFloat(0),
    default=None,
    help="GPUs each model's task reserves on Ray  [default: 1 when the cluster has GPUs]",
)
@click.option(
    "--retries",
    type=click.IntRange(0),
    default=None,
    help=f"Times a model is retried on Ray when its worker dies  [default: {DEFAULT_RETRIES}]",
)
@click.pass_obj
def ingest(
    obj: dict[str, Any],
    models: tuple[str, ...],
    from_file: Any,
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
    ray: str | None,
    gpus_per_task: float | None,
    retries: int | None,
) -> None:
    if not models and from_file is None:
        raise click.UsageError("give a MODEL (or several, or --from FILE)")
    if name is not None and (len(models) > 1 or from_file is not None):
        raise atlas.AtlasError("--name names one model; give each model its name in --from FILE")
    if ray is None and (gpus_per_task is not None or retries is not None):
        raise atlas.AtlasError("--gpus-per-task and --retries are for a job on Ray: add --ray")
    options = dict(
        name=name, device=device, processing=processing, top_k=top_k, max_rank=max_rank,
        dtype=dtype, replace=replace, gap_tol=gap_tol, exact_max=exact_max, coherence=coherence,
        ray=ray, gpus_per_task=gpus_per_task, retries=retries,
    )  # fmt: skip
    from atlas.cli.progress import Bars, on_terminal
    from atlas.cli.summary import print_ingest_summary, print_job_summary

    shown = on_terminal()  # stage lines and bars on a terminal; piped, only the summary
    try:
        with Bars() as bars:
            result = atlas.ingest(
                obj["atlas"], *models, from_file=from_file, log=_stage_line if shown else None,
                progress=bars if shown else None, **options,
            )  # fmt: skip
    except IngestFailed as failed:
        print_job_summary(failed.result.models)
        raise
    except KeyboardInterrupt:
        if not (from_file is not None or len(models) > 1 or ray is not None):
            raise  # one model: nothing was published
        stopped(
            "the models published before stay in the atlas; the ones in progress are not "
            "published (running the job again finishes it)"
        )
    if result.job:
        print_job_summary(result.models)
    else:
        print_ingest_summary(obj["atlas"], result.models[0].report)


def _stage_line(message: str) -> None:
    click.echo(message, err=True)


COMMANDS = [ingest]
