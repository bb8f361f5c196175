"""The spectrum figure: singular values by layer (and head), and layer norms with flags.

matplotlib is imported here only, with the non-interactive Agg backend, so that no other
command pays for it and no display is ever needed.
"""

from __future__ import annotations

from pathlib import Path

from query.spectrum import Spectra

KIND_TITLES = {
    "ov": "OV circuits (one line per head)",
    "mlp_in": "MLP W_in",
    "mlp_gate": "MLP W_gate",
    "mlp_out": "MLP W_out",
}


def plot_spectra(spectra: Spectra, out: str | Path, dpi: int = 80) -> Path:
    """Write a PNG with one row per kind: spectra on a log scale (left), layer norms (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    kinds = list(dict.fromkeys(r.kind for r in spectra.layers))
    n_layers = max(r.layer for r in spectra.layers) + 1
    fig, axes = plt.subplots(
        len(kinds), 2, figsize=(11, 3.2 * len(kinds)), squeeze=False, constrained_layout=True
    )
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
        right.set_xlabel("layer")
        right.set_xticks(xs)
        right.set_title("layer norms", fontsize=10)
        right.legend(fontsize=8)
    path = Path(out)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
