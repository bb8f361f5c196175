"""`svd-atlas export` and `svd-atlas load`: sharing atlases as bundles and Parquet trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

import atlas
from atlas.cli.result_file import refuse_inside
from atlas.writing import VECTOR_MODES


@click.command()
@click.argument("model_ids", nargs=-1)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Bundle file to write (one self-describing tar).",
)
@click.option(
    "--parquet",
    metavar="DEST",
    help="Write a hive-partitioned Parquet tree (one partition per model and table) to a folder "
    "or an object-store URL such as s3://bucket/prefix; models already there are kept.",
)
@click.option(
    "--vectors",
    type=click.Choice(VECTOR_MODES),
    default=VECTOR_MODES[0],
    show_default=True,
    help="How direction vectors are stored (f16 halves them; none leaves them out).",
)
@click.pass_obj
def export(
    obj: dict[str, Any],
    model_ids: tuple[str, ...],
    output: Path | None,
    parquet: str | None,
    vectors: str,
) -> None:
    """Export MODEL_IDS (default: every model) as a bundle (-o FILE) or a Parquet tree."""
    from atlas.cli.output import human_bytes
    from atlas.cli.progress import Bars

    if (output is None) == (parquet is None):
        raise click.UsageError("give exactly one of -o FILE (a bundle) or --parquet DEST")
    refuse_inside(output if output is not None else Path(str(parquet)), obj["atlas"])
    with atlas.open(obj["atlas"]) as a, Bars() as bars:  # a bar on a terminal only
        if output is not None:
            manifest = a.export(output, list(model_ids), vectors, progress=bars)
            names = ", ".join(m.model_id for m in manifest.models)
            size = human_bytes(output.stat().st_size)
            click.echo(f"exported {names} to {output} ({size}, vectors {vectors})")
        else:
            info = a.export_parquet(str(parquet), list(model_ids), vectors, progress=bars)
            click.echo(f"exported {', '.join(info['written'])} to {parquet} as a Parquet tree")


@click.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace models whose model_id already exists.")
@click.pass_obj
def load(obj: dict[str, Any], bundle: Path, replace: bool) -> None:
    """Import every model of BUNDLE into the atlas (verified first; all or nothing)."""
    from atlas.cli.progress import Bars

    with Bars() as bars:  # a bar on a terminal only
        results = atlas.load(obj["atlas"], bundle, replace, progress=bars)
    for r in results:
        last = r.first_direction_id + r.n_directions - 1
        ids = f"direction ids {r.first_direction_id}..{last}"
        if r.remapped:
            ids += (
                f" (remapped from {r.bundle_first_direction_id}: ids below the atlas's id "
                "counter are taken)"
            )
        verb = "replaced" if r.replaced else "loaded"
        click.echo(
            f"{verb} {r.model_id!r}: {r.n_directions:,} directions, {ids}, vectors {r.vectors}"
        )


COMMANDS = [export, load]
