"""`svd-atlas models`."""

from __future__ import annotations

from typing import Any

import click

from atlas.cli.output import emit, format_option

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
    import atlas
    from atlas.cli.output import human_bytes

    with atlas.open(obj["atlas"]) as a:
        rows = a.models()
        location = a.location
    if not rows and fmt == "table":
        click.echo(f"{location} holds no models yet (svd-atlas ingest MODEL adds one)")
        return
    for r in rows:
        r["size"] = human_bytes(r["size_bytes"]) if fmt == "table" else r["size_bytes"]
    emit(rows, MODEL_COLUMNS, fmt)


COMMANDS = [models]
