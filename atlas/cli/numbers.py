"""The CLI's one type for real-number options: finite, optionally within a range.

click's ``float`` and ``FloatRange`` accept ``nan`` and ``inf`` (``nan`` even passes any range
check, as every comparison with it is false); no option of this tool means anything with
them, so they are refused as click refuses any other bad value: one line.
"""

from __future__ import annotations

import math
from typing import Any

import click


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` (no bounds by default) that refuses ``nan`` and infinities."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number
