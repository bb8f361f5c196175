"""A log axis labels only as many ticks as fit: every minor tick labelled ran ``0.9 0.8 0.7``
into one smudge on the spectrum plots."""

from __future__ import annotations

import pytest

from query.spectrum_plot import singular_values_figure


def _labels(values: list[float]) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = singular_values_figure(values, "t")
    FigureCanvasAgg(fig).draw()  # labels exist once drawn
    (ax,) = fig.axes
    ticks = [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]
    low, high = ax.get_ylim()
    return [
        t.label1.get_text()
        for t in ticks
        if t.label1.get_text() and low <= float(t.label1.get_text()) <= high
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([4.0, 1.0, 0.2], {"0.2", "0.5", "1", "2"}),  # about 1.3 decades: 1, 2 and 5
        ([900.0, 3.0, 0.01], {"0.01", "0.1", "1", "10", "100", "1000"}),  # powers of ten
    ],
)
def test_log_ticks_are_labelled_sparsely(values: list[float], expected: set[str]) -> None:
    assert set(_labels(values)) == expected


def test_a_narrow_axis_labels_every_tick() -> None:
    labels = _labels([0.7, 0.5, 0.42])
    assert {"0.5", "0.6"} <= set(labels) and len(labels) >= 3
