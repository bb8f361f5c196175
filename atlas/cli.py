"""The ``svd-atlas`` command line.

Heavy libraries (torch, transformer_lens) are imported inside the commands that need them, so
that query commands start fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from atlas.defaults import DEFAULT_GAP_TOLERANCE, DEFAULT_TOP_K
from atlas.errors import AtlasError

DEFAULT_ATLAS = "./data/atlas"


class _Cli(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AtlasError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: the atlas is unchanged", err=True)
            sys.exit(130)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--atlas",
    "atlas_path",
    envvar="SVD_ATLAS",
    default=DEFAULT_ATLAS,
    show_default=True,
    type=click.Path(file_okay=True, dir_okay=True),
    help="Atlas directory (env SVD_ATLAS).",
)
@click.pass_context
def cli(ctx: click.Context, atlas_path: str) -> None:
    """A searchable atlas of the SVDs of transformer weight matrices."""
    ctx.obj = {"atlas": atlas_path}


@cli.command()
@click.argument("model")
@click.option("--name", help="model_id to store it under (default: derived from MODEL).")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--processing",
    type=click.Choice(["raw", "tl"]),
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
    type=click.Choice(["float32", "float64", "float16", "bfloat16"]),
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
    replace: bool,
) -> None:
    """Decompose MODEL into the atlas.

    MODEL is `minilm` (bundled, offline), a local Hugging Face model folder, a hub name
    (needs a network), or random:gpt2-small|gpt2-medium|gpt2-large|gpt2-xl|llama-tiny.
    """
    from atlas.summary import print_ingest_summary
    from ingest.job import IngestOptions
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
    )
    report = run_ingest(obj["atlas"], options)
    print_ingest_summary(obj["atlas"], report)


@cli.command()
@click.pass_obj
def models(obj: dict[str, Any]) -> None:
    """List the atlas's models with their shapes, processing and size."""
    import atlas
    from atlas.summary import print_models

    with atlas.open(obj["atlas"]) as a:
        print_models(a)


def main() -> None:
    cli(prog_name="svd-atlas")
