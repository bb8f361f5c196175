"""Spectra by layer, and the norm-jump anomaly rule (sprint finding A).

Everything here reads the atlas's ``matrices`` table only; no model is booted.

**Anomaly rule.** For each matrix kind, each layer gets one *layer norm* per statistic: the
spectral norm (``sigma_max``) and the Frobenius norm of its matrix (MLP kinds), or the largest
of its heads' (``ov``). A layer's *reference* is the median of the same norm over its
:data:`NEIGHBOURS` nearest other layers (by layer distance, the earlier layer first on ties).
The layer is flagged when ``norm / reference`` exceeds the jump factor (an upward jump) or is
below its inverse (a downward jump), for either statistic.

Why this shape: a median of four neighbours ignores one outlier among them, so the layers next
to a planted jump are not flagged with it, and at the first and last layer the neighbours are
simply the nearest four on the one side there is (a two-neighbour reference at an edge would be
dragged by one outlier). With only two layers a jump cannot be attributed to either, and both
are flagged. The default factor of 10 sits between what smooth depth growth produces (MiniLM's
largest neighbour ratio is about 3.8x, its layer 0 QK circuits'; random-weight models stay
within 1.1x) and the orders
of magnitude the sprint saw in gpt2-small's last layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atlas.core.contract import KINDS
from atlas.core.errors import AtlasError
from atlas.core.reader import Reader

NEIGHBOURS = 4
DEFAULT_JUMP_FACTOR = 10.0
NORMS = ("sigma_max", "frobenius_norm")
MATRIX_COLUMNS = (
    "layer",
    "head",
    "kind",
    "rank",
    "numerical_rank",
    "sigma_max",
    "frobenius_norm",
    "stable_rank",
    "effective_rank",
)


@dataclass
class LayerRow:
    """One layer of one kind: its norms, their ratios to the neighbours, and any flags."""

    layer: int  # where first (layer, then kind), as in every listing
    kind: str
    matrices: int
    sigma_max: float
    frobenius_norm: float
    sigma_head: int | None  # the head attaining the layer's sigma_max (ov)
    median_stable_rank: float
    median_effective_rank: float
    sigma_ratio: float
    frobenius_ratio: float
    flags: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["flag"] = "; ".join(self.flags) or None
        del out["flags"]
        return out


@dataclass
class Spectra:
    """One model's spectra (per matrix) and per-layer summary, for the chosen kinds."""

    model_id: str
    jump_factor: float
    matrices: list[dict[str, Any]]
    layers: list[LayerRow]

    @property
    def anomalies(self) -> list[LayerRow]:
        return [r for r in self.layers if r.flags]


def neighbour_ratios(values: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """Each value divided by the median of its ``neighbours`` nearest other entries.

    Nearest by index distance; ties (one on each side) are taken in order, earlier first.
    A single entry has no neighbours and gets ratio 1.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    ratios = np.ones(n)
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (abs(j - i), j))
        chosen = values[others[:neighbours]]
        if len(chosen) == 0:
            continue
        reference = float(np.median(chosen))
        ratios[i] = values[i] / reference if reference > 0 else math.inf
    return ratios


def jump_flags(ratio: float, factor: float) -> str | None:
    """``up`` / ``down`` when a neighbour ratio crosses the jump factor, else None."""
    if ratio > factor:
        return "up"
    if ratio < 1.0 / factor:
        return "down"
    return None


def load_spectra(
    a: Reader,
    model_id: str,
    kinds: tuple[str, ...] = (),
    jump_factor: float = DEFAULT_JUMP_FACTOR,
) -> Spectra:
    """Per-matrix statistics and the per-layer anomaly summary of ``model_id`` (``kinds`` and
    ``jump_factor`` checked by the caller: :class:`atlas.params.SpectrumParams`)."""
    a.require_model(model_id)
    present = [
        r["kind"]
        for r in a.sql(
            "SELECT DISTINCT kind FROM matrices WHERE model_id = ? ORDER BY kind", [model_id]
        ).to_pylist()
    ]
    missing = [k for k in kinds if k not in present]
    if missing:
        raise AtlasError(
            f"model {model_id!r} has no {', '.join(missing)} matrices",
            param="kind",
            hint=f"it has {', '.join(present)}",
        )
    chosen = [k for k in KINDS if k in (kinds or present)]
    rows = a.sql(
        f"SELECT {', '.join(MATRIX_COLUMNS)}, spectrum FROM matrices "
        "WHERE model_id = ? AND list_contains(?, kind) ORDER BY layer, head NULLS FIRST",
        [model_id, chosen],
    ).to_pylist()
    order = {k: i for i, k in enumerate(chosen)}
    rows.sort(key=lambda r: (order[r["kind"]], r["layer"], -1 if r["head"] is None else r["head"]))
    layers: list[LayerRow] = []
    for kind in chosen:
        layers.extend(_layer_rows(kind, [r for r in rows if r["kind"] == kind], jump_factor))
    return Spectra(model_id, jump_factor, rows, layers)


def _layer_rows(kind: str, rows: list[dict[str, Any]], factor: float) -> list[LayerRow]:
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append(r)
    layer_ids = sorted(by_layer)
    norms = {
        name: np.array([max(r[name] for r in by_layer[lay]) for lay in layer_ids]) for name in NORMS
    }
    ratios = {name: neighbour_ratios(norms[name]) for name in NORMS}
    out = []
    for i, lay in enumerate(layer_ids):
        group = by_layer[lay]
        top = max(group, key=lambda r: r["sigma_max"])
        row = LayerRow(
            kind=kind,
            layer=lay,
            matrices=len(group),
            sigma_max=float(norms["sigma_max"][i]),
            frobenius_norm=float(norms["frobenius_norm"][i]),
            sigma_head=top["head"],
            median_stable_rank=float(np.median([r["stable_rank"] for r in group])),
            median_effective_rank=float(np.median([r["effective_rank"] for r in group])),
            sigma_ratio=float(ratios["sigma_max"][i]),
            frobenius_ratio=float(ratios["frobenius_norm"][i]),
        )
        for name, label in (("sigma_max", "sigma_max"), ("frobenius_norm", "frobenius")):
            ratio = float(ratios[name][i])
            direction = jump_flags(ratio, factor)
            if direction:
                row.flags.append(f"{label} {direction} {ratio:.3g}x")
        out.append(row)
    return out
