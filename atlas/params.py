"""Every query's parameters, defined once: names, types, defaults, limits and help.

One pydantic model per query (:class:`SearchParams`, :class:`TraceParams`,
:class:`SpectrumParams`, :class:`SqlParams`, :class:`MatrixCardParams`,
:class:`CompositionParams`). From each come

- the keyword arguments of the :class:`atlas.api.Atlas` method, validated through the model;
- the HTTP query parameters (FastAPI reads the model: ``Annotated[SearchParams, Query()]``);
- the CLI options (:mod:`atlas.cli.params` makes the click options from the fields).

So a parameter has one name everywhere (``kind``, ``layer``, ``head``, ``model``), one default,
one limit, and a list has one spelling: comma-separated text (``kind=ov,mlp_in``, ``--kind
ov,mlp_in``), which Python callers may also give as a list. Every refusal is an
:class:`~atlas.errors.AtlasError` naming the parameter (:func:`validate`).
"""

from __future__ import annotations

import functools
import math
import operator
import re
import types
import typing
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic import model_validator as _model_validator

from atlas.core.contract import KINDS, MODES
from atlas.errors import BadParameter
from query.cards import DEFAULT_TOP
from query.circuits import DEFAULT_TOP as DEFAULT_EDGES
from query.filters import Filters
from query.spectrum import DEFAULT_JUMP_FACTOR
from query.trace import DEFAULT_MIN_COS

MAX_TEXT = 500  # characters of a list of ids, heads or words
MAX_K = 1_000  # search hits
MAX_HOPS = 5  # trace: neighbours of neighbours, so many times
# trace: rows returned, the origin included. Each hop expands every direction found so far,
# so this bounds the work of a trace as well as its answer.
MAX_TRACE_ROWS = 2_000
MAX_TOP = 1_000  # directions on one matrix card
MAX_SQL_TEXT = 20_000
MAX_VECTOR = 65_536  # values of a residual-space vector
MAX_SQL_ROWS = 100_000  # rows one SQL answer holds over HTTP (the server's bound)
Space = Literal["auto", "residual", "token"]
Side = Literal["read", "write", "query", "key"]
Circuit = Literal["ov", "qk"]  # a head's two circuits
Via = Literal["residual", "composition"]

_INTEGER = re.compile(r" *[0-9]+ *")  # ASCII digits only: not "1_0", not "٣", not "-1"
_LAYERS = "use N, START:STOP (stop excluded), START: or :STOP"


# -- the spellings of lists and ranges -----------------------------------------------------


def _items(value: Any, what: str, numbers: bool = False) -> list[str]:
    """A list given as comma-separated text or, from Python, as a list: its items as text
    (``numbers``: integers too), each once (a model named twice would be searched twice)."""
    items: list[Any]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple | set | frozenset) and value:
        items = [x for v in value for x in (v.split(",") if isinstance(v, str) else [v])]
    elif numbers and _is_int(value):
        items = [value]
    else:
        raise ValueError(f"give {what} separated by commas, or a list of them; not {value!r}")
    texts = [_text(x) if numbers else x for x in items]
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"give {what} separated by commas, none empty; not {value!r}")
    return list(dict.fromkeys(t.strip() for t in texts))


def _text(item: Any) -> Any:
    """An item of a list as text: a number (a head, from Python) as its digits."""
    return str(operator.index(item)) if _is_int(item) else item


def _names(value: Any) -> str | None:
    return None if value is None else ",".join(_items(value, "names"))


def _kinds(value: Any) -> str | None:
    if value is None:
        return None
    kinds = _items(value, "kinds")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    return ",".join(kinds)


def _modes(value: Any) -> str | None:
    if value is None:
        return None
    modes = [m.upper() for m in _items(value, "modes")]
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return ",".join(modes)


def _mode(value: Any) -> str:
    """One composition mode, any case: ``Q``, ``K`` or ``V``."""
    mode = value.upper() if isinstance(value, str) else value
    if mode not in MODES:
        raise ValueError(f"unknown mode {value!r}; choose from {', '.join(MODES)}")
    return str(mode)


def _heads(value: Any) -> str | None:
    if value is None:
        return None
    heads = _items(value, "head numbers", numbers=True)
    if not all(_INTEGER.fullmatch(h) for h in heads):
        raise ValueError(f"give head numbers (0 or more) separated by commas; not {value!r}")
    return ",".join(str(int(h)) for h in heads)


def _layers(value: Any) -> str | None:
    """``5``, ``"5"`` -> "5"; ``(10, 20)``, ``"10:20"`` -> "10:20"; ``(10, None)`` -> "10:"."""
    if value is None:
        return None
    stop: int | None
    if _is_int(value):
        start, stop = operator.index(value), operator.index(value) + 1
    elif isinstance(value, list | tuple) and len(value) == 2:
        if not all(v is None or _is_int(v) for v in value):
            raise ValueError(f"bad layer range {value!r}: {_LAYERS}")
        start, stop = value[0] or 0, value[1]  # (None, 2) is ":2", as (3, None) is "3:"
    elif isinstance(value, str):
        start, stop = _layer_text(value)
    else:
        raise ValueError(f"bad layer range {value!r}: {_LAYERS}")
    if start < 0 or (stop is not None and stop <= start):
        shown = f"{start}:{'' if stop is None else stop}"
        raise ValueError(f"empty or negative layer range {shown}: give 0 <= START < STOP")
    if stop == start + 1:
        return str(start)
    return f"{start}:{'' if stop is None else stop}"


def _layer_text(text: str) -> tuple[int, int | None]:
    start, colon, stop = text.partition(":")
    sign = re.compile(r" *-?[0-9]+ *")
    if not (sign.fullmatch(start) or (colon and not start.strip())) or (
        stop.strip() and not sign.fullmatch(stop)
    ):
        raise ValueError(f"bad layer range {text!r}: {_LAYERS}")
    first = int(start) if start.strip() else 0
    if not colon:
        return first, first + 1
    return first, int(stop) if stop.strip() else None


def _words(value: Any) -> Any:
    """Words given as a list (from Python) as one text: they are split on spaces and commas."""
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    return value


def _is_int(value: Any) -> bool:
    return hasattr(value, "__index__") and not isinstance(value, bool | str)


def _integer(value: Any) -> Any:
    """An int: bools refused (``True`` is not a count), numpy integers taken."""
    if isinstance(value, bool):
        raise ValueError(f"give an integer, not {value!r}")
    return operator.index(value) if _is_int(value) else value


def _number(value: Any) -> Any:
    """A number as given (pydantic converts it), refused first if it is a bool or not finite:
    a NaN would otherwise fail a bound instead ("less than or equal to 1")."""
    if isinstance(value, bool):
        raise ValueError(f"give a number, not {value!r}")
    try:
        finite = math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):  # not a number: pydantic says so
        return value
    if not finite:
        raise ValueError(f"Input should be a finite number (got {value!r})")
    return value


Int = Annotated[int, BeforeValidator(_integer)]
OptionalInt = Annotated[int | None, BeforeValidator(_integer)]  # bounds reach OpenAPI's schema
Float = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
Names = Annotated[str | None, BeforeValidator(_names)]
Kinds = Annotated[str | None, BeforeValidator(_kinds)]
Modes = Annotated[str | None, BeforeValidator(_modes)]
Mode = Annotated[str, BeforeValidator(_mode)]
Heads = Annotated[str | None, BeforeValidator(_heads)]
Layers = Annotated[str | None, BeforeValidator(_layers)]


# -- the models ----------------------------------------------------------------------------


class Params(BaseModel):
    """A query's parameters: unknown names refused, and None or an empty value (what a form
    sends for a field left blank) the same as none: the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @_model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None and not _blank(v)}
        return data


def _blank(value: Any) -> bool:
    return isinstance(value, str) and value == ""


class FilterParams(Params):
    """Which directions a search or trace may return; none given, no restriction."""

    model: Names = Field(None, max_length=MAX_TEXT, description="Model id(s), comma-separated.")
    kind: Kinds = Field(
        None, max_length=60, description=f"Matrix kind(s), comma-separated: {', '.join(KINDS)}."
    )
    layer: Layers = Field(
        None, max_length=30, description="Layer N, or START:STOP (stop excluded), START: or :STOP."
    )
    head: Heads = Field(None, max_length=MAX_TEXT, description="Head number(s), comma-separated.")
    side: Side | None = Field(None, description="Only read, write, query or key directions.")
    max_sv_index: OptionalInt = Field(None, ge=0, description="Keep sv_index <= N.")
    min_sigma: Float | None = Field(None, description="Keep sigma >= X.")

    def filters(self) -> Filters:
        """The filters as the query layer applies them."""
        layers: tuple[int, int | None] | None = None
        if self.layer is not None:
            start, colon, stop = self.layer.partition(":")
            layers = (int(start), int(start) + 1) if not colon else (int(start), _stop(stop))
        return Filters(
            kinds=None if self.kind is None else tuple(self.kind.split(",")),
            layers=layers,
            heads=None if self.head is None else tuple(int(h) for h in self.head.split(",")),
            side=self.side,
            max_sv_index=self.max_sv_index,
            min_sigma=self.min_sigma,
        )

    def models(self) -> tuple[str, ...] | None:
        return None if self.model is None else tuple(self.model.split(","))


def _stop(text: str) -> int | None:
    return int(text) if text else None


class SearchOptions(FilterParams):
    """What a search takes besides its query (shared by the words, direction and vector forms)."""

    space: Space = Field(
        "auto", description="auto: residual within one model, token across models."
    )
    k: Int = Field(10, ge=1, le=MAX_K, description="Hits.")
    min_score: Float = Field(0.0, ge=0.0, le=1.0, description="Keep |cos| >= X.")


class SearchParams(SearchOptions):
    """A search for words (``text``, one concept) or for a direction like ``direction``."""

    text: Annotated[str | None, BeforeValidator(_words)] = Field(
        None, max_length=MAX_TEXT, description="Words of one concept."
    )
    direction: OptionalInt = Field(None, ge=0, description="More like this direction id.")


class VectorSearch(SearchOptions):
    """A search for a residual-space vector (the HTTP API's JSON body)."""

    vector: list[float] = Field(max_length=MAX_VECTOR, description="A residual-space vector.")


class TraceParams(FilterParams):
    """How far a trace follows a direction through the layers."""

    min_cos: Float = Field(DEFAULT_MIN_COS, gt=0.0, le=1.0, description="Keep |cos| >= X.")
    hops: Int = Field(
        1, ge=1, le=MAX_HOPS, description="Follow neighbours of neighbours this many times."
    )
    limit: Int = Field(
        500, ge=1, le=MAX_TRACE_ROWS, description="Rows at most, the origin included."
    )
    same_model: bool = Field(False, description="Do not cross into other models.")
    via: Via = Field(
        "residual",
        description="residual: neighbours by cosine; composition: the Q, K and V read "
        "directions of later heads that a write direction's composition pairs reach.",
    )
    min_share: Float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="With via composition: keep pairs carrying at least this share of their "
        "composition score squared.",
    )

    @_model_validator(mode="after")
    def _read_by_its_walk(self) -> TraceParams:
        """An option the chosen walk would ignore is refused, not ignored: the residual walk
        reads the cosine, the filters and the models; the composition walk the share."""
        ignored = (
            [*FilterParams.model_fields, "min_cos", "same_model"]
            if self.via == "composition"
            else ["min_share"]
        )
        for name in ignored:
            if getattr(self, name) != type(self).model_fields[name].default:
                kept = "`min_share`" if self.via == "composition" else "`min_cos` and the filters"
                raise ValueError(
                    f"`{name}` does not apply to a trace via {self.via}, which keeps its "
                    f"steps by {kept}; leave it out"
                )
        return self


class CompositionParams(Params):
    """A model's strongest head compositions, or one head's in- and out-edges."""

    model: str = Field(min_length=1, max_length=MAX_TEXT, description="A model id.")
    layer: OptionalInt = Field(None, ge=0, description="With head: one head's edges.")
    head: OptionalInt = Field(None, ge=0, description="With layer: one head's edges.")
    mode: Modes = Field(
        None, max_length=10, description="Mode(s), comma-separated: Q, K, V (default: all)."
    )
    top: Int = Field(DEFAULT_EDGES, ge=1, le=MAX_TOP, description="Edges per mode.")
    min_relative: Float = Field(
        0.0, ge=0.0, description="Keep edges whose score is at least X times the baseline."
    )

    @_model_validator(mode="after")
    def _both_or_neither(self) -> CompositionParams:
        if (self.layer is None) != (self.head is None):
            missing = "head" if self.head is None else "layer"
            raise ValueError(f"give both `layer` and `head`, or neither (`{missing}` is missing)")
        return self

    def modes(self) -> tuple[str, ...]:
        return MODES if self.mode is None else tuple(self.mode.split(","))


class SpectrumParams(Params):
    """One model's spectra by layer."""

    model: str = Field(min_length=1, max_length=MAX_TEXT, description="A model id.")
    kind: Kinds = Field(
        None,
        max_length=60,
        description=f"Matrix kind(s), comma-separated: {', '.join(KINDS)} (default: every kind).",
    )
    jump_factor: Float = Field(
        DEFAULT_JUMP_FACTOR,
        gt=1.0,
        description="Flag a layer whose norm differs from its neighbours' median by more than "
        "this factor.",
    )

    def kinds(self) -> tuple[str, ...]:
        return () if self.kind is None else tuple(self.kind.split(","))


class SqlParams(Params):
    """One SQL statement."""

    query: str = Field(min_length=1, max_length=MAX_SQL_TEXT, description="One statement.")
    max_rows: OptionalInt = Field(None, ge=1, description="Rows returned at most (default: all).")


class MatrixCardParams(Params):
    """Which of a matrix's directions its card shows."""

    top: Int = Field(DEFAULT_TOP, ge=1, le=MAX_TOP, description="Directions shown.")
    offset: Int = Field(0, ge=0, description="From this sv_index.")
    circuit: Circuit = Field(
        "ov", description="A head's circuit: ov (what it moves) or qk (what it attends by)."
    )


P = TypeVar("P", bound=Params)


def validate(schema: type[P], /, **values: Any) -> P:
    """``schema(**values)``, or a :class:`BadParameter` naming the first parameter at fault."""
    try:
        return schema(**values)
    except ValidationError as exc:
        raise validation_error(exc.errors(), list(schema.model_fields)) from None


def validation_error(
    errors: Any, known: list[str] | None = None, located: bool = False
) -> BadParameter:
    """Pydantic's (or FastAPI's) list of errors as one :class:`BadParameter` for the first:
    its parameter, what is wrong and the value given. Each interface renders the parameter in
    its own terms. ``located``: FastAPI's, whose locations start with where (query, path,
    body)."""
    error: dict[str, Any] = next(iter(errors), {})
    loc = list(error.get("loc", ()))[1 if located else 0 :]
    # a name, not a position (an invalid JSON body's error is located at a character offset)
    param = loc[0] if loc and isinstance(loc[0], str) else None
    if error.get("type") == "extra_forbidden":
        hint = f"the parameters are {', '.join(known)}" if known else None
        return BadParameter("no such parameter", param=param, hint=hint)
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    got = error.get("input")
    if error.get("type") != "value_error" and isinstance(got, str | int | float):
        message += f" (got {repr(got)[:40]})"
    return BadParameter(message, param=param)


def plain_type(annotation: Any) -> Any:
    """A field's type as a Python caller reads it: ``Annotated`` metadata left out
    (``int | None``, not the validators around it)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return plain_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, map(plain_type, typing.get_args(annotation)))
    return annotation


def cli_flag(name: str) -> str:
    """The CLI's flag for a parameter: ``k`` -> ``-k``, ``min_cos`` -> ``--min-cos``."""
    return f"-{name}" if len(name) == 1 else f"--{name.replace('_', '-')}"
