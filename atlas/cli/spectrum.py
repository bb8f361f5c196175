"""`svd-atlas spectrum`."""

from __future__ import annotations

from typing import Any

import click

from atlas.cli.output import dumps, emit, format_option
from atlas.cli.params import options
from atlas.interface import MATRIX_COLUMNS
from atlas.params import SpectrumParams

LAYER_COLUMNS = [  # the model first, then where: layer and kind
    "model_id",
    "layer",
    "kind",
    "matrices",
    "sigma_max",
    "frobenius_norm",
    "sigma_head",
    "median_stable_rank",
    "median_effective_rank",
    "sigma_ratio",
    "frobenius_ratio",
    "flag",
]


@click.command()
@options(SpectrumParams)
@click.option("--heads", is_flag=True, help="One row per matrix (every head) instead of per layer.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    help="Also write a figure here, in the format of its extension (.png, .pdf, .svg, "
    "...; PNG without one).",
)
@format_option
@click.pass_obj
def spectrum(
    obj: dict[str, Any],
    model: str,
    kind: str | None,
    jump_factor: str,
    heads: bool,
    plot_path: str | None,
    fmt: str,
) -> None:
    """Singular value spectra of MODEL by layer, and layers whose norm jumps.

    A layer is flagged when its spectral or Frobenius norm (the largest over heads for ov and
    qk) is more than --jump-factor times above or below the median of its 4 nearest layers'.
    """
    import atlas

    figure = None
    if plot_path:
        from atlas.cli.result_file import output_file
        from atlas.interface import check_plot_path

        figure = output_file(check_plot_path(plot_path), obj["atlas"])
    with atlas.open(obj["atlas"]) as a:
        spectra = a.spectrum(model, kind=kind, jump_factor=jump_factor)
    if figure is not None:
        from atlas.interface import plot_spectra

        plot_spectra(spectra, figure)
    if fmt == "json":
        click.echo(
            dumps(
                {
                    "model_id": spectra.model_id,
                    "jump_factor": spectra.jump_factor,
                    "layers": [r.as_dict() for r in spectra.layers],
                    "anomalies": [r.as_dict() for r in spectra.anomalies],
                    "matrices": spectra.matrices if heads else None,
                }
            )
        )
    elif heads:
        columns = ["model_id", *MATRIX_COLUMNS] + (["spectrum"] if fmt == "csv" else [])
        emit([{"model_id": spectra.model_id, **m} for m in spectra.matrices], columns, fmt)
    else:
        rows = [{"model_id": spectra.model_id, **r.as_dict()} for r in spectra.layers]
        emit(rows, LAYER_COLUMNS, fmt)
    if fmt == "table":
        _summary(spectra, plot_path)


def _summary(spectra: Any, plot_path: str | None) -> None:
    if spectra.anomalies:
        click.echo(f"\n{len(spectra.anomalies)} flagged (jump factor {spectra.jump_factor:g}):")
        for r in spectra.anomalies:
            click.echo(f"  {r.kind} layer {r.layer}: {'; '.join(r.flags)}")
    else:
        click.echo(
            f"\nno layer's norm differs from its neighbours' by more than {spectra.jump_factor:g}x"
        )
    if plot_path:
        click.echo(f"figure: {plot_path}")


COMMANDS = [spectrum]
