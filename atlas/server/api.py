"""The JSON API: the library's calls over HTTP, with the CLI's ``--format json`` field names.

Every parameter is validated by FastAPI before the library sees it (bad input is a 400), and
every size is bounded: ``k``, trace hops and limits (``query.limits``, as in the CLI and
the library), SQL rows, text and vector lengths, and
(in :mod:`atlas.server.app`) the request body.
"""

from __future__ import annotations

import io
import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from atlas.api import Atlas, coherence
from atlas.core.errors import AtlasError, one_line
from atlas.interface import (
    DEFAULT_JUMP_FACTOR,
    DEFAULT_MIN_COS,
    DEFAULT_TOP,
    HOPS,
    KINDS,
    MLP_KINDS,
    TRACE_LIMIT,
    K,
    Kind,
    csv_cell,
    jsonable,
    load_npy,
    result_rows,
    text_filters,
    unique_names,
)
from atlas.server.live import LiveAtlas
from atlas.server.work import run

MAX_TEXT = 500
MAX_VECTOR = 65_536
MAX_BODY_NPY = MAX_VECTOR * 8 + 4_096  # a float64 vector of MAX_VECTOR values and its header
MAX_TOP = 1_000
SQL_ROWS = 1_000  # rows a SQL result shows unless asked for more
MAX_SQL_ROWS = 100_000  # rows a SQL result or download can hold
MAX_SQL_TEXT = 20_000
MAX_SQL_BYTES = 32 << 20  # of rows a SQL result holds (the rows past it are cut off)

router = APIRouter(prefix="/api", tags=["api"])


class StrictJSON(Response):
    """JSON with NaN and infinities as null, times as ISO 8601 (``atlas.core.jsondata``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(jsonable(content), ensure_ascii=False, allow_nan=False).encode()


class FilterParams(BaseModel):
    """The CLI's filters, written as it takes them. An empty value (what a form sends for a
    field left blank) is the same as no value."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v != ""}
        return data

    model: str | None = Field(None, max_length=MAX_TEXT, description="model id(s), a,b")
    kind: str | None = Field(None, max_length=60, description=f"kind(s): {', '.join(KINDS)}")
    layers: str | None = Field(None, max_length=30, description="N, START:STOP, START: or :STOP")
    head: str | None = Field(None, max_length=MAX_TEXT, description="head number(s), 1,2")
    side: Literal["read", "write"] | None = None
    max_sv_index: int | None = Field(None, ge=0, description="keep sv_index <= N")
    min_sigma: float | None = Field(None, allow_inf_nan=False, description="keep sigma >= X")

    def library_args(self) -> dict[str, Any]:
        return {
            **text_filters(self.model, self.kind, self.layers, self.head),
            "side": self.side,
            "max_sv_index": self.max_sv_index,
            "min_sigma": self.min_sigma,
        }


class SearchParams(FilterParams):
    q: str | None = Field(None, max_length=MAX_TEXT, description="words of one concept")
    direction: int | None = Field(None, ge=0, description="more like this direction id")
    space: Literal["auto", "residual", "token"] = "auto"
    k: int = Field(K.default, ge=K.low, le=K.high)
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="keep |cos| >= X")


class VectorSearch(FilterParams):
    vector: list[float] = Field(max_length=MAX_VECTOR, description="a residual-space vector")
    space: Literal["auto", "residual"] = "auto"
    k: int = Field(K.default, ge=K.low, le=K.high)
    min_score: float = Field(0.0, ge=0.0, le=1.0)


class TraceParams(FilterParams):
    min_cos: float = Field(DEFAULT_MIN_COS, gt=0.0, le=1.0)
    hops: int = Field(HOPS.default, ge=HOPS.low, le=HOPS.high)
    limit: int = Field(TRACE_LIMIT.default, ge=TRACE_LIMIT.low, le=TRACE_LIMIT.high)
    same_model: bool = False


class SqlParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str = Field(min_length=1, max_length=MAX_SQL_TEXT, description="one read-only statement")
    limit: int = Field(SQL_ROWS, ge=1, le=MAX_SQL_ROWS, description="rows returned at most")
    format: Literal["json", "csv", "parquet"] = "json"


def live_atlas(request: Request) -> LiveAtlas:
    live: LiveAtlas = request.app.state.live
    return live


def time_limit(request: Request) -> float:
    limit: float = request.app.state.timeout
    return limit


# -- what the pages call too ---------------------------------------------------------------


def search_hits(
    a: Atlas, params: SearchParams | VectorSearch, vector: Any = None
) -> dict[str, Any]:
    text = params.q if isinstance(params, SearchParams) else None
    direction = params.direction if isinstance(params, SearchParams) else None
    hits = a.search(
        text,
        direction=direction,
        vector=vector,
        space=params.space,
        k=params.k,
        min_score=params.min_score,
        **params.library_args(),
    )
    return {"hits": [h.to_dict() for h in hits], "notes": hits.notes}


def trace_steps(a: Atlas, direction_id: int, params: TraceParams) -> dict[str, Any]:
    steps = a.trace(
        direction_id,
        params.min_cos,
        params.hops,
        limit=params.limit,
        same_model=params.same_model,
        **params.library_args(),
    )
    return {
        "direction_id": direction_id,
        "steps": [s.to_dict() for s in steps],
        "notes": steps.notes,
    }


def spectrum_record(
    a: Atlas, model_id: str, kinds: tuple[str, ...], jump_factor: float, heads: bool
) -> dict[str, Any]:
    """What ``svd-atlas spectrum --format json`` prints."""
    spectra = a.spectrum(model_id, kinds, jump_factor)
    return {
        "model_id": spectra.model_id,
        "jump_factor": spectra.jump_factor,
        "layers": [r.as_dict() for r in spectra.layers],
        "anomalies": [r.as_dict() for r in spectra.anomalies],
        "matrices": spectra.matrices if heads else None,
    }


def sql_result(a: Atlas, query: str, limit: int) -> tuple[Any, bool]:
    """The statement's first ``limit`` rows (as many as fit in about MAX_SQL_BYTES), and
    whether it had more."""
    table = a.sql(query, max_rows=limit + 1, max_bytes=MAX_SQL_BYTES)
    truncated = table.num_rows > limit or table.nbytes >= MAX_SQL_BYTES
    return table.slice(0, limit), truncated


# -- endpoints -----------------------------------------------------------------------------


async def answer(request: Request, call: Any) -> StrictJSON:
    """``call(atlas)`` as strict JSON (not through FastAPI's encoder: the CLI's encoding)."""
    return StrictJSON(await run(live_atlas(request), call, time_limit(request)))


@router.get("/health", response_class=StrictJSON)
async def health(request: Request) -> Any:
    """Whether the server is up, what it serves, and which models are damaged (``degraded``:
    those are left out or refused, the others are served as usual)."""
    live = live_atlas(request)

    def state(a: Atlas) -> dict[str, Any]:
        damaged = {**a.damaged, **a.damaged_indexes()}
        status = "degraded" if damaged else "ok"
        return {"status": status, "location": live.location, "models": a.model_ids(),
                "damaged": damaged, "reloads": live.generation}  # fmt: skip

    return StrictJSON(await run(live, state, time_limit(request)))


@router.get("/models", response_class=StrictJSON)
async def models(request: Request) -> Any:
    """One row per model (``svd-atlas models --format json``)."""
    return await answer(request, lambda a: a.models())


@router.get("/search", response_class=StrictJSON)
async def search(request: Request, params: Annotated[SearchParams, Query()]) -> Any:
    """Directions nearest to words (``q``) or to a direction (``direction``), both valences."""
    return await answer(request, lambda a: search_hits(a, params))


@router.post("/search", response_class=StrictJSON)
async def search_vector(request: Request, body: VectorSearch) -> Any:
    """Directions nearest to a residual-space vector (JSON body ``{"vector": [...]}``)."""
    vector = np.asarray(body.vector, dtype=np.float32)
    return await answer(request, lambda a: search_hits(a, body, vector))


@router.get("/directions/{direction_id}", response_class=StrictJSON)
async def direction(request: Request, direction_id: Annotated[int, Path(ge=0)]) -> Any:
    """A direction's card (``svd-atlas show ID --format json``)."""
    return await answer(request, lambda a: a.card(direction_id))


@router.get("/directions/{direction_id}/trace", response_class=StrictJSON)
async def trace(
    request: Request,
    direction_id: Annotated[int, Path(ge=0)],
    params: Annotated[TraceParams, Query()],
) -> Any:
    """Every direction within ``hops`` steps of ``|cos| >= min_cos`` (``svd-atlas trace``)."""
    return await answer(request, lambda a: trace_steps(a, direction_id, params))


@router.get("/coherence", response_class=StrictJSON)
async def coherence_of_list(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=MAX_TEXT, description="tok, tok, ...")],
) -> Any:
    """A comma-separated token list's coherence (``svd-atlas coherence --format json``): its
    percentile among random lists of the same length (``coherence_pct``), then the raw score,
    P(a lenient judge names a theme) (``coherence``)."""
    return await answer(request, lambda _a: coherence(q)[0].to_dict())


# A model id may hold any printable character, "/" included (hub names): it is a query
# parameter, never a path segment.
ModelId = Annotated[str, Query(min_length=1, max_length=MAX_TEXT, description="a model id")]
MatrixHead = Annotated[
    str,
    Query(max_length=10, pattern=rf"^([0-9]+|{'|'.join(MLP_KINDS)})$",
          description=f"a head number, or {', '.join(MLP_KINDS)}"),
]  # fmt: skip


@router.get("/matrix", response_class=StrictJSON)
async def matrix(
    request: Request,
    model: ModelId,
    layer: Annotated[int, Query(ge=0)],
    head: MatrixHead,
    top: Annotated[int, Query(ge=1, le=MAX_TOP)] = DEFAULT_TOP,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    """A head's (``head`` a number) or MLP matrix's card, with its directions ``offset`` to
    ``offset + top`` (``svd-atlas show MODEL LAYER HEAD --format json``)."""
    return await answer(request, lambda a: a.card(model, layer, head, top=top, offset=offset))


@router.get("/spectrum", response_class=StrictJSON)
async def spectrum(
    request: Request,
    model: ModelId,
    kind: Annotated[list[Kind], Query()] = [],  # noqa: B006
    jump_factor: Annotated[float, Query(gt=1.0, allow_inf_nan=False)] = DEFAULT_JUMP_FACTOR,
    heads: bool = False,
) -> Any:
    """Spectra by layer and the layers whose norm jumps (``svd-atlas spectrum --format
    json``); ``heads`` adds one row per matrix."""
    return await answer(
        request, lambda a: spectrum_record(a, model, tuple(kind), jump_factor, heads)
    )


@router.get("/sql", response_model=None)
async def sql_get(request: Request, params: Annotated[SqlParams, Query()]) -> Response:
    """One read-only statement (as ``svd-atlas sql``): JSON rows, or a CSV or Parquet file."""
    return await _sql(request, params)


@router.post("/sql", response_model=None)
async def sql_post(request: Request, params: SqlParams) -> Response:
    """The same, the statement in a JSON body (for statements too long for a URL)."""
    return await _sql(request, params)


async def _sql(request: Request, params: SqlParams) -> Response:
    def work(a: Atlas) -> tuple[bytes, bool]:  # encoded in the worker, under the time limit
        table, truncated = sql_result(a, params.q, params.limit)
        return encode_result(table, params.format, params.limit, truncated), truncated

    body, truncated = await run(live_atlas(request), work, time_limit(request))
    headers = {"X-Row-Limit": str(params.limit), "X-Truncated": str(truncated).lower()}
    media, filename = RESULT_FORMATS[params.format]
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(body, media_type=media, headers=headers)


RESULT_FORMATS = {  # media type and download name of each SQL result format
    "json": ("application/json", None),
    "csv": ("text/csv; charset=utf-8", "result.csv"),
    "parquet": ("application/vnd.apache.parquet", "result.parquet"),
}


def encode_result(table: Any, fmt: str, limit: int, truncated: bool) -> bytes:
    """A SQL result as the bytes of a JSON document, a CSV file or a Parquet file. Columns of
    one name are told apart (``a``, ``a_2``); a value Python cannot hold is shown as text."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        try:
            pq.write_table(table.rename_columns(unique_names(table.column_names)), sink)
        except pa.ArrowException as exc:
            raise AtlasError(
                f"this result cannot be written as Parquet ({one_line(exc, 120)}); ask for "
                "format=csv or json"
            ) from None
        return sink.getvalue()
    names, rows = result_rows(table)
    if fmt == "csv":
        import csv

        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([csv_cell(v) for v in row] for row in rows)
        return text.getvalue().encode("utf-8")
    document = {"columns": names, "rows": [dict(zip(names, r, strict=True)) for r in rows],
                "row_limit": limit, "truncated": truncated}  # fmt: skip
    return json.dumps(jsonable(document), ensure_ascii=False, allow_nan=False).encode()


def check_vector_file(data: bytes) -> np.ndarray:
    """An uploaded ``.npy`` file as a vector: its header checked before its data is read, never
    unpickled, at most MAX_VECTOR values."""
    return load_npy(data, MAX_VECTOR)
