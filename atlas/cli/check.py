"""`svd-atlas check`: the integrity check of an atlas, and repair of its FAISS indexes."""

from __future__ import annotations

import sys
from typing import Any

import click

import atlas
from atlas.cli.output import dumps, text_or_json_option
from atlas.cli.params import render
from atlas.interface import printable


@click.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Fix what can be fixed without the model: rebuild indexes, manifests and a lost "
    "catalog; take a model whose store cannot be read out of the catalog; upgrade an atlas "
    "made by an older format version (1 or 2).",
)
@text_or_json_option("text for reading, json for machines.")
@click.pass_obj
def check(obj: dict[str, Any], repair: bool, fmt: str) -> None:
    """Verify the atlas: tables, ids, indexes, checksums and values of every model.

    On a Parquet tree: what can be checked read-only (tables, ids and values).

    Prints one line per problem, each with what fixes it, and a summary; exits 1 if a problem
    remains. --repair never changes a store's DuckDB data (an upgrade writes new stores).
    """
    report = atlas.check(obj["atlas"], repair=repair)
    if fmt == "json":
        click.echo(dumps(report.to_json()))
    else:
        for finding in report.findings:  # what fixes it, in flags
            click.echo(printable(render(finding.line(), click.get_current_context())))
        for line in report.repaired:
            click.echo(printable(f"repaired  {line}"))
        verdict = "ok" if report.ok else f"{len(report.errors)} problem(s)"
        click.echo(
            printable(
                f"checked {report.models} models, {report.directions:,} directions in "
                f"{report.root}: {verdict}"
            )
        )
    if not report.ok:
        sys.exit(1)


COMMANDS = [check]
