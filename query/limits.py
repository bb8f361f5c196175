"""The bounds of every size a caller chooses, defined once for the CLI, the Python façade and
the HTTP API (issue 23: a limit that differs by interface is a bug).

Each bound is checked by the library itself (:meth:`Bound.check`), so a Python caller gets the
same refusal as a CLI user (click's ``IntRange`` with :attr:`Bound.low`/:attr:`Bound.high`)
and an HTTP client (pydantic's ``ge``/``le``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atlas.core.errors import AtlasError


@dataclass(frozen=True)
class Bound:
    """An integer a caller picks: its name, default and inclusive range."""

    name: str
    default: int
    low: int
    high: int

    def check(self, value: Any) -> int:
        """``value`` if it is an integer in range, else one :class:`AtlasError` line."""
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not self.low <= value <= self.high
        ):
            raise AtlasError(
                f"{self.name} must be an integer from {self.low} to {self.high}, not {value!r}"
            )
        return value


K = Bound("k", default=10, low=1, high=1_000)  # search hits
HOPS = Bound("hops", default=1, low=1, high=5)  # trace: neighbours of neighbours, so many times
# trace: rows returned, the origin included. Each hop expands every direction found so far,
# so this bounds the work of a trace as well as its answer.
TRACE_LIMIT = Bound("limit", default=500, low=1, high=2_000)
