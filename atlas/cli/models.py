"""`svd-atlas models` and `svd-atlas open`."""

from __future__ import annotations

from typing import Any

import click

from atlas.cli.output import emit, format_option
from atlas.cli.params import render
from atlas.interface import no_models

MODEL_COLUMNS = [
    "model_id",
    "architecture",
    "layers",
    "heads",
    "d_model",
    "d_head",
    "d_mlp",
    "d_vocab",
    "processing",
    "directions",
    "index",
    "size",
    "source",
]


@click.command()
@format_option
@click.pass_obj
def models(obj: dict[str, Any], fmt: str) -> None:
    """List the atlas's models with their shapes, processing, index type and size."""
    _list(obj["atlas"], fmt)


@click.command("open")
@click.argument("location")
@format_option
def open_location(location: str, fmt: str) -> None:
    """Open LOCATION and list its models: an atlas directory, a bundle, a Parquet tree, or a
    tree's URL (s3://bucket/prefix, or any fsspec URL; credentials as the cloud's own tools
    take them). Every command reads it with --atlas LOCATION, and Python with
    atlas.open(LOCATION); a bundle and a tree are read-only."""
    _list(location, fmt)
    click.echo(
        f"read it with: svd-atlas --atlas {location} COMMAND, or atlas.open({location!r})",
        err=True,
    )


def _list(location: str, fmt: str) -> None:
    import atlas
    from atlas.cli.output import human_bytes

    with atlas.open(location) as a:
        rows = a.models()
        location, damaged = a.location, list(a.damaged)
    if not rows and fmt == "table":
        click.echo(render(no_models(location, damaged), click.get_current_context(silent=True)))
        return
    for r in rows:
        r["size"] = human_bytes(r["size_bytes"]) if fmt == "table" else r["size_bytes"]
    emit(rows, MODEL_COLUMNS, fmt)


COMMANDS = [models, open_location]
