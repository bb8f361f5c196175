"""The JSON API: the library's calls over HTTP, with the field names of the CLI's JSON.

The query parameters are the models of :mod:`atlas.params` (the names, defaults and limits of
the Python façade and the CLI); FastAPI validates them before the library sees them (bad
input is a 400 naming the parameter). Every size is bounded: ``k``, trace hops and limits,
SQL rows, text and vector lengths, and (in :mod:`atlas.server.app`) the request body.
"""

from __future__ import annotations

import io
import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import Field

from atlas.api import Atlas, CompositionTrace, coherence
from atlas.errors import AtlasError, one_line
from atlas.interface import (
    MLP_KINDS,
    csv_cell,
    jsonable,
    load_npy,
    records_json,
    result_rows,
    text_slices,
    unique_names,
)
from atlas.params import (
    MAX_SQL_ROWS,
    MAX_TEXT,
    MAX_VECTOR,
    CompositionParams,
    MatrixCardParams,
    OptionalInt,
    SearchParams,
    SpectrumParams,
    SqlParams,
    TraceParams,
    VectorSearch,
)
from atlas.server.live import LiveAtlas
from atlas.server.work import run

MAX_BODY_NPY = MAX_VECTOR * 8 + 4_096  # a float64 vector of MAX_VECTOR values and its header
SQL_ROWS = 1_000  # rows a SQL result shows unless asked for more
MAX_SQL_BYTES = 32 << 20  # of rows a SQL result holds (the rows past it are cut off)

router = APIRouter(prefix="/api", tags=["api"])


class StrictJSON(Response):
    """JSON with NaN and infinities as null, times as ISO 8601 (``atlas.core.jsondata``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return records_json(content).encode()


class SqlRequest(SqlParams):
    """A statement over HTTP: at most SQL_ROWS rows unless ``max_rows`` asks for more (up to
    MAX_SQL_ROWS: the server bounds what one answer holds), as JSON rows or a CSV or Parquet
    file."""

    max_rows: OptionalInt = Field(
        None, ge=1, le=MAX_SQL_ROWS, description=f"Rows returned at most (default: {SQL_ROWS})."
    )
    format: Literal["json", "csv", "parquet"] = "json"

    def rows(self) -> int:
        return self.max_rows or SQL_ROWS


class SpectrumRequest(SpectrumParams):
    heads: bool = Field(False, description="One row per matrix too.")


HEAD_PATTERN = rf"^([0-9]+|{'|'.join(MLP_KINDS)})$"  # a matrix: a head or an MLP kind
HEAD_HELP = f"A head number, or {', '.join(MLP_KINDS)}."


class MatrixRequest(MatrixCardParams):
    """A head's or MLP matrix's card: which matrix (the façade's positional arguments)."""

    model: str = Field(min_length=1, max_length=MAX_TEXT, description="A model id.")
    layer: int = Field(ge=0, description="A layer.")
    head: str = Field(max_length=10, pattern=HEAD_PATTERN, description=HEAD_HELP)


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
    hits = a.search(vector=vector, **params.model_dump(exclude={"vector"}))
    return {"hits": [h.to_dict() for h in hits], "notes": hits.notes}


def trace_steps(a: Atlas, direction_id: int, params: TraceParams) -> dict[str, Any]:
    steps = a.trace(direction_id, **params.model_dump())
    if isinstance(steps, CompositionTrace):
        return {"direction_id": direction_id, "steps": list(steps), "notes": steps.notes}
    return {
        "direction_id": direction_id,
        "steps": [s.to_dict() for s in steps],
        "notes": steps.notes,
    }


def spectrum_record(a: Atlas, params: SpectrumRequest) -> dict[str, Any]:
    """What ``svd-atlas spectrum --format json`` prints."""
    spectra = a.spectrum(**params.model_dump(exclude={"heads"}))
    return {
        "model_id": spectra.model_id,
        "jump_factor": spectra.jump_factor,
        "layers": [r.as_dict() for r in spectra.layers],
        "anomalies": [r.as_dict() for r in spectra.anomalies],
        "matrices": spectra.matrices if params.heads else None,
    }


def sql_result(a: Atlas, query: str, limit: int) -> tuple[Any, bool]:
    """The statement's first ``limit`` rows (as many as fit in about MAX_SQL_BYTES), and
    whether it had more."""
    table = a.sql(query, max_rows=limit + 1, max_bytes=MAX_SQL_BYTES)
    truncated = table.num_rows > limit or table.nbytes >= MAX_SQL_BYTES
    table = table.slice(0, limit)
    if table.nbytes > MAX_SQL_BYTES:  # the rows that fit (the last batch read went past)
        first = table.slice(0, 1).nbytes
        if first > MAX_SQL_BYTES:
            raise AtlasError(
                f"the result's first row holds {first / 2**20:,.0f} MB, more than a result "
                f"may ({MAX_SQL_BYTES >> 20} MB): select less of it"
            )
        table = next(text_slices(table, MAX_SQL_BYTES))
    return table, truncated


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
    """Directions nearest to words (``text``) or to a direction (``direction``), both
    valences."""
    return await answer(request, lambda a: search_hits(a, params))


@router.post("/search", response_class=StrictJSON)
async def search_vector(request: Request, body: VectorSearch) -> Any:
    """Directions nearest to a residual-space vector (JSON body ``{"vector": [...]}``)."""
    vector = np.asarray(body.vector, dtype=np.float64)  # float32 would overflow past 3.4e38
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


@router.get("/composition", response_class=StrictJSON)
async def composition(request: Request, params: Annotated[CompositionParams, Query()]) -> Any:
    """Head composition (``svd-atlas circuits MODEL [LAYER HEAD] --format json``): a model's
    strongest edges per mode, or with ``layer`` and ``head`` that head's in- and out-edges
    with the direction pairs that carry them."""
    return await answer(request, lambda a: a.composition(**params.model_dump()))


@router.get("/composition/trace/{direction_id}", response_class=StrictJSON)
async def composition_trace(
    request: Request,
    direction_id: Annotated[int, Path(ge=0)],
    params: Annotated[TraceParams, Query()],
) -> Any:
    """``svd-atlas trace ID --via composition --format json``: the trace of
    ``/api/directions/{id}/trace`` through composition, whatever ``via`` says."""
    through = params.model_copy(update={"via": "composition"})
    return await answer(request, lambda a: trace_steps(a, direction_id, through))


@router.get("/coherence", response_class=StrictJSON)
async def coherence_of_list(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=MAX_TEXT, description="tok, tok, ...")],
) -> Any:
    """A comma-separated token list's coherence (``svd-atlas coherence --format json``): its
    percentile among random lists of the same length (``coherence_pct``), then the raw score,
    P(a lenient judge names a theme) (``coherence``)."""
    return await answer(request, lambda _a: coherence(q, wait=False)[0].to_dict())


# A model id may hold any printable character, "/" included (hub names): it is a query
# parameter, never a path segment.
ModelId = Annotated[str, Query(min_length=1, max_length=MAX_TEXT, description="a model id")]
MatrixHead = Annotated[str, Query(max_length=10, pattern=HEAD_PATTERN, description=HEAD_HELP)]


@router.get("/matrix", response_class=StrictJSON)
async def matrix(request: Request, params: Annotated[MatrixRequest, Query()]) -> Any:
    """A head's (``head`` a number) or MLP matrix's card, with its directions ``offset`` to
    ``offset + top`` (``svd-atlas show MODEL LAYER HEAD --format json``)."""
    p = params
    options = p.model_dump(exclude={"model", "layer", "head"})  # every option of the card
    return await answer(request, lambda a: a.card(p.model, p.layer, p.head, **options))


@router.get("/spectrum", response_class=StrictJSON)
async def spectrum(request: Request, params: Annotated[SpectrumRequest, Query()]) -> Any:
    """Spectra by layer and the layers whose norm jumps (``svd-atlas spectrum --format
    json``); ``heads`` adds one row per matrix."""
    return await answer(request, lambda a: spectrum_record(a, params))


@router.get("/sql", response_model=None)
async def sql_get(request: Request, params: Annotated[SqlRequest, Query()]) -> Response:
    """One read-only statement (as ``svd-atlas sql``): JSON rows, or a CSV or Parquet file."""
    return await _sql(request, params)


@router.post("/sql", response_model=None)
async def sql_post(request: Request, params: SqlRequest) -> Response:
    """The same, the statement in a JSON body (for statements too long for a URL)."""
    return await _sql(request, params)


async def _sql(request: Request, params: SqlRequest) -> Response:
    def work(a: Atlas) -> tuple[bytes, bool]:  # encoded in the worker, under the time limit
        table, truncated = sql_result(a, params.query, params.rows())
        return encode_result(table, params.format, params.rows(), truncated), truncated

    body, truncated = await run(live_atlas(request), work, time_limit(request))
    headers = {"X-Row-Limit": str(params.rows()), "X-Truncated": str(truncated).lower()}
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
                f"this result cannot be written as Parquet ({one_line(exc, 120)})",
                param="format",
                hint="ask for csv or json",
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
