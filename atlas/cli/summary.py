"""The one-screen summary an ingest ends with."""

from __future__ import annotations

from typing import Any

import click

import atlas
from atlas.api import Atlas
from atlas.cli.output import human_bytes, print_table
from atlas.interface import JUDGED_SQL, table_cell

EXAMPLE_TOKENS = 6


def example_directions(a: Atlas, model_id: str) -> list[dict[str, Any]]:
    """The largest-sigma judged direction of each matrix kind, with its top tokens."""
    query = f"""
        WITH judged AS (
            SELECT * FROM directions d WHERE model_id = ? AND ({JUDGED_SQL})
            QUALIFY row_number() OVER (PARTITION BY kind ORDER BY sigma DESC) = 1
        )
        SELECT j.direction_id, j.kind, j.layer, j.head, j.side, j.sv_index, j.sigma,
               j.degenerate, t.polarity, list(t.token_display ORDER BY t.rank) AS tokens
        FROM judged j JOIN top_tokens t USING (direction_id)
        WHERE t.rank < ? AND t.basis = 'unembed'
        GROUP BY ALL ORDER BY j.kind, t.polarity DESC
    """
    rows = a.sql(query, [model_id, EXAMPLE_TOKENS]).to_pylist()
    merged: dict[int, dict[str, Any]] = {}
    for r in rows:
        merged.setdefault(r["direction_id"], r)[r["polarity"]] = r["tokens"]
    return list(merged.values())


def print_ingest_summary(path: str, report: Any) -> None:
    click.echo(f"\ningested {report.model_id!r} into {path} on {report.device}")
    counts = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in report.counts.items())
    click.echo(f"  rows:    {counts}")
    times = ", ".join(f"{k} {v:.2f} s" for k, v in report.stage_seconds.items())
    click.echo(f"  time:    {report.wall_seconds:.2f} s in all; busy: {times}")
    click.echo(
        f"  memory:  peak RSS {report.peak_rss_mb:.0f} MB"
        + (f", peak GPU {report.peak_gpu_mb:.0f} MB" if report.peak_gpu_mb else "")
    )
    click.echo(f"  on disk: {human_bytes(report.size_bytes)}")
    for message in report.skipped:
        click.echo(f"  skipped: {message}")
    with atlas.open(path) as a:
        click.echo("  examples (largest singular value of each kind):")
        for ex in example_directions(a, report.model_id):
            where = f"L{ex['layer']}" + (f" H{ex['head']}" if ex["head"] is not None else "")
            flag = "  [degenerate: only its group's span is meaningful]" if ex["degenerate"] else ""
            click.echo(
                f"    #{ex['direction_id']} {ex['kind']} {where} {ex['side']} "
                f"sv{ex['sv_index']} sigma={ex['sigma']:.3g}{flag}"
            )
            click.echo(f"        + {table_cell(ex.get('pos', []))}")
            click.echo(f"        - {table_cell(ex.get('neg', []))}")


def print_job_summary(outcomes: list[Any]) -> None:
    """A job's models, one row each: what became of it, its directions and time, its error."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("published", "skipped", "failed")}
    click.echo(
        f"\njob of {len(outcomes)} models: {counts['published']} published, "
        f"{counts['skipped']} skipped (already in the atlas), {counts['failed']} failed"
    )
    rows = [
        {
            "model_id": o.model_id,
            "status": o.status,
            "directions": o.report.counts["directions"] if o.report else None,
            "seconds": o.seconds if o.status != "skipped" else None,
            "error": o.error,
        }
        for o in outcomes
    ]
    print_table(rows, ["model_id", "status", "directions", "seconds", "error"])
