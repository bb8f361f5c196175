"""Search filters: checked values, the SQL that applies them, and parsing the CLI's spelling."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.core.contract import KINDS, SIDES
from atlas.core.errors import AtlasError
from atlas.core.reader import Reader


@dataclass(frozen=True)
class Filters:
    """Which directions a search or trace may return. ``None`` means no restriction.

    ``layers`` is a half-open range ``(start, stop)`` like a Python slice (``stop`` None: to
    the last layer); ``max_sv_index`` keeps sv_index <= it. Build one from loosely typed values
    (the CLI's strings or a Python caller's) with :func:`make_filters`.
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
        if self.layers is not None:
            start, stop = self.layers
            if start < 0 or (stop is not None and stop <= start):
                raise AtlasError(
                    f"empty or negative layer range {start}:{'' if stop is None else stop}; "
                    "give START:STOP with 0 <= START < STOP"
                )
        if any(h < 0 for h in self.heads or ()):
            raise AtlasError(f"head numbers are 0 or more, got {list(self.heads or ())}")
        if self.max_sv_index is not None and self.max_sv_index < 0:
            raise AtlasError(f"max_sv_index must be 0 or more, got {self.max_sv_index}")
        if self.min_sigma is not None and not math.isfinite(self.min_sigma):
            raise AtlasError(f"min_sigma must be a finite number, got {self.min_sigma}")

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
        return table["direction_id"].to_numpy().astype(np.int64)


def make_filters(
    kinds: Any = None,
    layers: Any = None,
    heads: Any = None,
    side: Any = None,
    max_sv_index: Any = None,
    min_sigma: Any = None,
) -> Filters:
    """:class:`Filters` from a Python caller's values, each checked (the CLI parses its strings
    with :func:`parse_layers`, :func:`parse_ints` and :func:`parse_names` first).

    ``kinds``: a list of kind names; ``layers``: a layer number or ``(start, stop)`` (stop None:
    to the last layer); ``heads``: a head number or a list of them.
    """
    return Filters(
        kinds=_names(kinds, "kinds"),
        layers=_layer_range(layers),
        heads=_ints(heads, "heads"),
        side=_optional(side, str, "side"),
        max_sv_index=_optional(max_sv_index, int, "max_sv_index"),
        min_sigma=_optional(min_sigma, float, "min_sigma"),
    )


def _names(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple | set | frozenset) or not all(
        isinstance(v, str) for v in value
    ):
        raise AtlasError(f"{what} must be a list of names, e.g. {what}=['ov'], not {value!r}")
    return tuple(value)


def _layer_range(value: Any) -> tuple[int, int | None] | None:
    if value is None:
        return None
    if _is_int(value):
        return int(value), int(value) + 1
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and _is_int(value[0])
        and (value[1] is None or _is_int(value[1]))
    ):
        return int(value[0]), None if value[1] is None else int(value[1])
    raise AtlasError(f"layers must be a layer number or (start, stop), not {value!r}")


def _ints(value: Any, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if _is_int(value):
        return (int(value),)
    if isinstance(value, list | tuple | set) and all(_is_int(v) for v in value):
        return tuple(int(v) for v in value)
    raise AtlasError(f"{what} must be a number or a list of numbers, not {value!r}")


def _optional(value: Any, kind: type, what: str) -> Any:
    if value is None:
        return None
    if kind is int and _is_int(value):
        return int(value)
    if kind is float and (_is_int(value) or isinstance(value, float)):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise AtlasError(
        f"{what} must be {'a number' if kind is float else kind.__name__}, not {value!r}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


_INTEGER = re.compile(r" *-?[0-9]+ *")  # ASCII digits only: not "1_0", not "٣"


def _integer(text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError(text)
    return int(text)


def parse_layers(text: str | None) -> tuple[int, int | None] | None:
    """``"5"`` -> (5, 6); ``"10:20"`` -> (10, 20); ``"10:"`` -> (10, None); ``":4"`` -> (0, 4)."""
    if text is None:
        return None
    try:
        if ":" not in text:
            layer = _integer(text)
            return layer, layer + 1
        start, stop = text.split(":", 1)
        return _integer(start) if start.strip() else 0, _integer(stop) if stop.strip() else None
    except ValueError:
        raise AtlasError(f"bad layer range {text!r}: use N, START:STOP, START: or :STOP") from None


def parse_ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(_integer(x) for x in text.split(","))  # "1,,2" and "" are refused
    except ValueError:
        raise AtlasError(f"bad {what} {text!r}: give integers separated by commas") from None


def parse_names(text: str | None, what: str = "name list") -> tuple[str, ...] | None:
    """``"a, b"`` -> ("a", "b"); an empty item (``"a,,b"``, ``""``, a tab) is refused."""
    if text is None:
        return None
    names = tuple(x.strip() for x in text.split(","))
    if not all(names):
        raise AtlasError(f"bad {what} {text!r}: give names separated by commas")
    return names


def text_filters(
    models: str | None, kinds: str | None, layers: str | None, heads: str | None
) -> dict[str, Any]:
    """Filters written as text, as the CLI's options and the server's parameters take them
    (``"a,b"``, ``"ov,mlp_in"``, ``"0:3"``, ``"1,2"``), as the library's arguments."""
    return {
        "model": parse_names(models, "model list"),
        "kinds": parse_names(kinds, "kind list"),
        "layers": parse_layers(layers),
        "heads": parse_ints(heads, "head"),
    }
