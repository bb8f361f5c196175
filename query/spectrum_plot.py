"""The spectrum figure: singular values by layer (and head), and layer norms with flags.

matplotlib is imported here only, and only through its object-oriented API (a ``Figure`` per
plot, no pyplot state), so that no other command pays for it, no display is ever needed, and
a server can draw figures in several threads at once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from atlas.core.errors import AtlasError
from query.spectrum import Spectra

KIND_TITLES = {
    "ov": "OV circuits (one line per head)",
    "mlp_in": "MLP W_in",
    "mlp_gate": "MLP W_gate",
    "mlp_out": "MLP W_out",
}


def plot_spectra(spectra: Spectra, out: str | Path, dpi: int = 80) -> Path:
    """Write the figure (:func:`spectra_figure`) in the format of ``out``'s extension (PNG
    when it has none), as a new file renamed over ``out``: a file ``out`` shares with another
    name (a hard link into an atlas) is replaced, never written into."""
    path = check_plot_path(out)
    fmt = path.suffix.lower().removeprefix(".") or "png"
    target = path.resolve()  # through a symbolic link: the link stays
    if not target.parent.is_dir():
        raise AtlasError(f"cannot write {out}: the folder {path.parent} does not exist")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        spectra_figure(spectra).savefig(tmp, dpi=dpi, format=fmt)
        os.replace(tmp, target)
    except OSError as exc:
        raise AtlasError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_plot_path(out: str | Path) -> Path:
    """``out`` when matplotlib can write its extension; otherwise one line listing those it
    can (matplotlib's own list), before any work is done."""
    from matplotlib.figure import Figure

    path = Path(out)
    extension = path.suffix.lower().removeprefix(".")
    supported = sorted(Figure().canvas.get_supported_filetypes())
    if extension and extension not in supported:
        raise AtlasError(
            f"cannot write a figure as .{extension} ({path}): use one of the extensions "
            f"{', '.join('.' + f for f in supported)}"
        )
    return path


def spectra_figure(spectra: Spectra) -> Any:
    """One row per kind: spectra on a log scale (left), layer norms with flags (right)."""
    import matplotlib
    from matplotlib import cm, colors
    from matplotlib.figure import Figure

    kinds = list(dict.fromkeys(r.kind for r in spectra.layers))
    n_layers = max(r.layer for r in spectra.layers) + 1
    fig = Figure(figsize=(11, 3.2 * len(kinds)), layout="constrained")
    axes = fig.subplots(len(kinds), 2, squeeze=False)
    norm = colors.Normalize(vmin=0, vmax=max(n_layers - 1, 1))
    cmap = matplotlib.colormaps["viridis"]
    for row, kind in zip(axes, kinds, strict=True):
        left, right = row
        mats = [m for m in spectra.matrices if m["kind"] == kind]
        heads = any(m["head"] is not None for m in mats)
        for m in mats:
            values = [v for v in m["spectrum"] if v > 0]
            left.plot(
                range(len(values)),
                values,
                color=cmap(norm(m["layer"])),
                lw=0.6 if heads else 1.2,
                alpha=0.55 if heads else 0.9,
            )
        left.set_yscale("log")
        _plain_log_ticks(left)
        left.set_xlabel("singular value index")
        left.set_ylabel("sigma")
        left.set_title(f"{spectra.model_id}: {KIND_TITLES.get(kind, kind)}", fontsize=10)
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=left, label="layer")

        layer_rows = [r for r in spectra.layers if r.kind == kind]
        xs = [r.layer for r in layer_rows]
        prefix = "max over heads: " if heads else ""
        right.plot(xs, [r.sigma_max for r in layer_rows], "o-", label=f"{prefix}sigma_max")
        right.plot(xs, [r.frobenius_norm for r in layer_rows], "s-", label=f"{prefix}Frobenius")
        flagged = [r for r in layer_rows if r.flags]
        if flagged:
            right.scatter(
                [r.layer for r in flagged],
                [max(r.sigma_max, r.frobenius_norm) for r in flagged],
                s=160,
                facecolors="none",
                edgecolors="red",
                linewidths=2,
                label=f"jump > {spectra.jump_factor:g}x",
                zorder=5,
            )
        right.set_yscale("log")
        _plain_log_ticks(right)
        right.set_xlabel("layer")
        right.set_xticks(xs)
        right.set_title("layer norms", fontsize=10)
        right.legend(fontsize=8)
    return fig


def singular_values_figure(values: list[float], title: str) -> Any:
    """One matrix's singular values by index, on a log scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.6), layout="constrained")
    ax = fig.subplots()
    shown = [v for v in values if v > 0]
    ax.plot(range(len(shown)), shown, "o-", ms=2.5, lw=1)
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("singular value index")
    ax.set_ylabel("sigma")
    ax.set_title(title, fontsize=10)
    return fig


def _plain_log_ticks(ax: Any) -> None:
    """Log-axis labels as plain numbers (``0.5``, ``2``), not ``5 x 10^-1``, and only as many
    as fit: every tick within a decade, 1, 2 and 5 over a few, powers of ten beyond (every
    minor tick labelled ran ``0.9 0.8 0.7 ...`` into one smudge)."""
    from matplotlib import ticker

    def label(value: float, _position: Any) -> str:
        if value <= 0:
            return ""
        low, high = ax.get_ylim()
        decades = math.log10(high / low) if 0 < low < high else 1.0
        shown = range(1, 10) if decades < 0.6 else (1, 2, 5) if decades < 2.5 else (1,)
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return f"{value:g}" if mantissa in shown else ""

    plain = ticker.FuncFormatter(label)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
