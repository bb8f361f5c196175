"""`svd-atlas models`."""

from __future__ import annotations

from typing import Any

import click


@click.command()
@click.pass_obj
def models(obj: dict[str, Any]) -> None:
    """List the atlas's models with their shapes, processing and size."""
    import atlas
    from atlas.summary import print_models

    with atlas.open(obj["atlas"]) as a:
        print_models(a)


COMMANDS = [models]
