"""Search filters, and the SQL that turns them into the allowed direction ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.errors import AtlasError
from atlas.handle import Atlas
from atlas.schema import KINDS, SIDES


@dataclass(frozen=True)
class Filters:
    """Which directions a search or trace may return. ``None`` means no restriction.

    ``layers`` is a half-open range ``(start, stop)`` like a Python slice (``stop`` None: to
    the last layer); ``max_sv_index`` keeps sv_index <= it.
    """

    kinds: tuple[str, ...] | None = None
    layers: tuple[int, int | None] | None = None
    heads: tuple[int, ...] | None = None
    side: str | None = None
    max_sv_index: int | None = None
    min_sigma: float | None = None

    def __post_init__(self) -> None:
        for kind in self.kinds or ():
            if kind not in KINDS:
                raise AtlasError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        if self.side is not None and self.side not in SIDES:
            raise AtlasError(f"unknown side {self.side!r}; choose read or write")

    @property
    def active(self) -> bool:
        return any(v is not None for v in vars(self).values())

    def where(self) -> tuple[str, list[Any]]:
        """A SQL condition on ``directions`` and its parameters."""
        clauses: list[str] = ["TRUE"]
        params: list[Any] = []
        if self.kinds is not None:
            clauses.append("kind IN (SELECT unnest(?))")
            params.append(list(self.kinds))
        if self.layers is not None:
            clauses.append("layer >= ?")
            params.append(self.layers[0])
            if self.layers[1] is not None:
                clauses.append("layer < ?")
                params.append(self.layers[1])
        if self.heads is not None:
            clauses.append("head IN (SELECT unnest(?))")
            params.append(list(self.heads))
        if self.side is not None:
            clauses.append("side = ?")
            params.append(self.side)
        if self.max_sv_index is not None:
            clauses.append("sv_index <= ?")
            params.append(self.max_sv_index)
        if self.min_sigma is not None:
            clauses.append("sigma >= ?")
            params.append(self.min_sigma)
        return " AND ".join(clauses), params

    def allowed_ids(self, a: Atlas, model_id: str) -> np.ndarray:
        condition, params = self.where()
        table = a.con.sql(
            f"SELECT direction_id FROM {a.alias(model_id)}.directions WHERE {condition}",
            params=params,
        ).to_arrow_table()
        return table["direction_id"].to_numpy().astype(np.int64)


def parse_layers(text: str | None) -> tuple[int, int | None] | None:
    """``"5"`` -> (5, 6); ``"10:20"`` -> (10, 20); ``"10:"`` -> (10, None); ``":4"`` -> (0, 4)."""
    if text is None:
        return None
    try:
        if ":" not in text:
            layer = int(text)
            return layer, layer + 1
        start, stop = text.split(":", 1)
        return int(start or 0), int(stop) if stop else None
    except ValueError:
        raise AtlasError(f"bad layer range {text!r}: use N, START:STOP, START: or :STOP") from None


def parse_ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise AtlasError(f"bad {what} {text!r}: give integers separated by commas") from None


def parse_names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())
