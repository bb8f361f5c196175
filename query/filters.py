"""Search filters as the query layer applies them: the SQL condition on ``directions``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.core.reader import Reader
from atlas.core.vectors import numbers


@dataclass(frozen=True)
class Filters:
    """Which directions a search or trace may return. ``None`` means no restriction.

    ``layers`` is a half-open range ``(start, stop)`` like a Python slice (``stop`` None: to
    the last layer); ``max_sv_index`` keeps sv_index <= it. The values are checked where they
    come in: :class:`atlas.params.FilterParams` builds one.
    """

    kinds: tuple[str, ...] | None = None
    layers: tuple[int, int | None] | None = None
    heads: tuple[int, ...] | None = None
    side: str | None = None
    max_sv_index: int | None = None
    min_sigma: float | None = None

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

    def allowed_ids(self, reader: Reader, model_id: str) -> np.ndarray:
        condition, params = self.where()
        table = reader.sql(
            f"SELECT direction_id FROM {reader.relation(model_id, 'directions')} WHERE {condition}",
            params,
        )
        return numbers(table["direction_id"]).astype(np.int64)
