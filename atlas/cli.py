"""The ``svd-atlas`` command line.

Heavy libraries (torch, transformer_lens) are imported inside the commands that need them, so
that query commands start fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

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


def _register() -> None:
    """Each area of the tool keeps its commands in its own module under ``atlas.commands``."""
    from atlas.commands import (
        check,
        coherence,
        compare,
        edit,
        exchange,
        ingest,
        models,
        query,
        spectrum,
    )

    for module in (ingest, models, query, spectrum, coherence, compare, edit, exchange, check):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="svd-atlas")
