"""`svd-atlas check`: the integrity check of an atlas, and repair of its FAISS indexes."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from atlas.output import text_or_json_option


@click.command()
@click.option("--repair", is_flag=True, help="Rebuild missing, stale or damaged FAISS indexes.")
@text_or_json_option("text for reading, json for machines.")
@click.pass_obj
def check(obj: dict[str, Any], repair: bool, fmt: str) -> None:
    """Verify the atlas: tables, ids, indexes and checksums of every model.

    Prints one line per problem and a summary; exits 1 if a problem remains. --repair rebuilds
    FAISS indexes from DuckDB (never changing DuckDB data); other problems name what to do.
    """
    from atlas.check import check_atlas
    from atlas.repair import repair_atlas

    report = repair_atlas(obj["atlas"]) if repair else check_atlas(obj["atlas"])
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    else:
        for finding in report.findings:
            click.echo(finding.line())
        for model_id in report.repaired:
            click.echo(f"repaired  {model_id}  residual.faiss rebuilt from DuckDB")
        verdict = "ok" if report.ok else f"{len(report.errors)} problem(s)"
        click.echo(
            f"checked {report.models} models, {report.directions:,} directions in "
            f"{report.root}: {verdict}"
        )
    if not report.ok:
        sys.exit(1)


COMMANDS = [check]
