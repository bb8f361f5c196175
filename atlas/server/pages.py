"""The atlas browser: server-side pages over the same calls as the JSON API.

Pages are plain HTML forms and links (no JavaScript), rendered by Jinja2 with every value
escaped; plots are SVG drawn by matplotlib and shown as images. A model id may hold any
printable character, "/" included, so it travels as a query parameter.
"""

from __future__ import annotations

import io
import math
import shlex
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from atlas.api import Atlas, coherence
from atlas.errors import AtlasError
from atlas.interface import DEFAULT_ATLAS, KINDS, MLP_KINDS, MatrixStat, result_rows, table_cell
from atlas.params import (
    MAX_HOPS,
    MAX_K,
    MAX_SQL_ROWS,
    MAX_SQL_TEXT,
    MAX_TEXT,
    MAX_VECTOR,
    Circuit,
    Mode,
    SearchParams,
    TraceParams,
    VectorSearch,
    cli_flag,
    validate,
)
from atlas.server import api
from atlas.server.api import (
    SQL_ROWS,
    MatrixHead,
    ModelId,
    SqlRequest,
    live_atlas,
    time_limit,
)
from atlas.server.work import run

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every value, whatever the template's name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)
PAGE_DIRECTIONS = 20  # singular directions per page of a matrix
SQL_PAGE_ROWS = 1_000  # rows a SQL page shows at most (downloads take up to MAX_SQL_ROWS)
GRID_STATS = {
    "sigma_max": "sigma_max (spectral norm)",
    "stable_rank": "stable rank",
    "effective_rank": "effective rank",
    # short: the picker must fit a phone's width (the page explains the two scores)
    "coherence_pct": "coherence percentile",
    "top_coherence_pct": "top direction's percentile",
    "coherence": "coherence (raw)",
    "top_coherence": "coherence of the top direction",
}
EDITS = (("ablate", -1.0), ("dampen", -0.5), ("amplify", 1.0))


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def command(request: Request, *args: Any) -> str:
    """The ``svd-atlas`` command line that reproduces a page, quoted for a shell, naming the
    served atlas unless it is the default one."""
    location = live_atlas(request).location
    prefix = [] if Path(location) == Path(DEFAULT_ATLAS) else [cli_flag("atlas"), location]
    return shlex.join(["svd-atlas", *prefix, *(str(a) for a in args)])


templates.env.globals["command"] = command
templates.env.filters["cell"] = table_cell


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status, status=status, message=message)


# -- home and search -----------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    models = await run(live_atlas(request), lambda a: a.models(), time_limit(request))
    return render(request, "home.html", models=models, location=live_atlas(request).location)


@router.get("/search", response_class=HTMLResponse)
async def search(request: Request, params: Annotated[SearchParams, Query()]) -> HTMLResponse:
    asked = params.text is not None or params.direction is not None
    return await _search_page(request, params, None if asked else {})


@router.post("/search", response_class=HTMLResponse)
async def search_upload(
    request: Request,
    vector_file: Annotated[UploadFile, File(description="a .npy vector")],
    model: Annotated[str | None, Form(max_length=MAX_TEXT)] = None,
    k: Annotated[str | None, Form()] = None,
) -> HTMLResponse:
    data = await vector_file.read(api.MAX_BODY_NPY + 1)
    shown = SearchParams(model=model)
    try:
        params = validate(VectorSearch, vector=[], model=model, k=k)
        shown = validate(SearchParams, model=model, k=k)
        if len(data) > api.MAX_BODY_NPY:
            raise AtlasError(f"the upload is over {api.MAX_BODY_NPY} bytes", param="vector_file")
        vector = api.check_vector_file(data)
    except AtlasError as exc:
        return await _search_page(request, shown, {"error": str(exc), "status": exc.status})
    return await _search_page(request, shown, None, params, vector)


async def _search_page(
    request: Request,
    params: SearchParams,
    result: dict[str, Any] | None,
    vector_params: VectorSearch | None = None,
    vector: Any = None,
) -> HTMLResponse:
    """The search form, filled in, with results (or the error of the query)."""
    live, limit = live_atlas(request), time_limit(request)

    def work(a: Atlas) -> dict[str, Any]:
        models = a.model_ids()
        if result is not None:
            return {"models": models, **result}
        try:
            found = api.search_hits(a, vector_params or params, vector)
        except AtlasError as exc:  # shown in the form, with the API's status
            return {"models": models, "error": str(exc), "status": exc.status}
        return {"models": models, **found}

    context = await run(live, work, limit)
    status = context.get("status", 400 if context.get("error") else 200)
    hits = context.get("hits")
    return render(
        request,
        "search.html",
        status,
        params=params,
        kinds=KINDS,
        models=context["models"],
        hits=hits,
        notes=context.get("notes", []),
        error=context.get("error"),
        uploaded=vector is not None,
        max_k=MAX_K,
        max_vector=MAX_VECTOR,
        hit_bars=[token_bars(h["tokens"], h["token_scores"]) for h in hits or []],
    )


def token_bars(tokens: list[str], scores: list[float], n: int = 8) -> list[dict[str, Any]]:
    """The first ``n`` tokens with bar widths (percent of the largest |score| shown)."""
    shown = list(zip(tokens[:n], scores[:n], strict=False))
    top = max((abs(s) for _, s in shown), default=0.0) or 1.0
    return [{"token": t, "score": s, "width": round(100 * abs(s) / top)} for t, s in shown]


# -- model ---------------------------------------------------------------------------------


@router.get("/model", response_class=HTMLResponse)
async def model_page(
    request: Request,
    model: ModelId,
    stat: MatrixStat = "sigma_max",
) -> HTMLResponse:
    def work(a: Atlas) -> dict[str, Any]:
        row = a.model(model)
        spectra = a.spectrum(model)
        return {"model": row, "grid": model_grid(a, model, stat), "spectra": spectra}

    context = await run(live_atlas(request), work, time_limit(request))
    return render(request, "model.html", stat=stat, stats=GRID_STATS, **context)


def model_grid(a: Atlas, model_id: str, stat: str) -> dict[str, Any]:
    """Layers x heads (and the MLP matrices) with ``stat`` and a colour for each cell. Each
    kind has its own colour scale: MLP norms are an order of magnitude above heads'."""
    rows = [r for r in a.matrix_stats(model_id, stat) if r["kind"] != "qk"]  # heads: OV
    scales = {}
    for kind in KINDS:
        values = [r["value"] for r in rows if r["kind"] == kind and _finite(r["value"])]
        if values:
            low, high = min(values), max(values)
            scales[kind] = {"kind": kind, "low": low, "high": high,
                            "legend": [_colour(low + (high - low) * i / 4, low, high)
                                       for i in range(5)]}  # fmt: skip
    layers: dict[int, dict[str, Any]] = {}
    for r in rows:
        scale = scales.get(r["kind"], {"low": 0.0, "high": 1.0})
        cell = {"value": r["value"], **_colour(r["value"], scale["low"], scale["high"])}
        layer = layers.setdefault(r["layer"], {"layer": r["layer"], "heads": {}, "mlp": {}})
        if r["kind"] == "ov":
            layer["heads"][r["head"]] = cell
        else:
            layer["mlp"][r["kind"]] = cell
    n_heads = max((h + 1 for r in layers.values() for h in r["heads"]), default=0)
    mlp_kinds = [k for k in MLP_KINDS if any(k in r["mlp"] for r in layers.values())]
    return {
        "layers": list(layers.values()),
        "heads": list(range(n_heads)),
        "mlp_kinds": mlp_kinds,
        "scales": list(scales.values()),
        "missing": not scales,
    }


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _colour(value: float | None, low: float, high: float) -> dict[str, str]:
    """A viridis colour for ``value`` between ``low`` and ``high``, and a readable text colour."""
    if not _finite(value):
        return {"background": "#eeeeee", "text": "#555555"}
    assert value is not None
    from matplotlib import colormaps, colors

    share = 0.5 if high <= low else (value - low) / (high - low)
    r, g, b, _ = colormaps["viridis"](share)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return {
        "background": colors.to_hex((r, g, b)),
        "text": "#000000" if luminance > 0.45 else "#ffffff",
    }


@router.get("/model/spectrum.svg")
async def model_spectrum_svg(request: Request, model: ModelId) -> Response:
    from atlas.interface import spectra_figure

    figure = await run(
        live_atlas(request), lambda a: spectra_figure(a.spectrum(model)), time_limit(request)
    )
    return _svg(figure)


def _svg(figure: Any) -> Response:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return Response(buffer.getvalue(), media_type="image/svg+xml")


# -- circuits ------------------------------------------------------------------------------


@router.get("/circuits", response_class=HTMLResponse)
async def circuits_page(
    request: Request,
    model: ModelId,
    mode: Annotated[Mode, Query()] = "K",
    top: Annotated[int, Query(ge=1, le=1000)] = 20,
    min_relative: Annotated[float, Query(ge=0.0, allow_inf_nan=False)] = 0.0,
) -> HTMLResponse:
    """A model's composition: per mode, each head's strongest in-edge as a heatmap, and the
    strongest edges above a relative-score threshold."""

    def work(a: Atlas) -> dict[str, Any]:
        edges = a.composition(model, mode=mode, top=top, min_relative=min_relative)["edges"]
        info = a.model(model)
        strongest = a.sql(
            "SELECT dst_layer, dst_head, arg_max(src_layer, score) AS src_layer, "
            "arg_max(src_head, score) AS src_head, max(relative) AS relative "
            "FROM composition WHERE model_id = ? AND mode = ? GROUP BY ALL",
            [model, mode],
        ).to_pylist()
        return {"edges": edges, "grid": _composition_grid(strongest, info["heads"])}

    context = await run(live_atlas(request), work, time_limit(request))
    return render(request, "circuits.html", model_id=model, mode=mode, top=top,
                  min_relative=min_relative, **context)  # fmt: skip


def _composition_grid(rows: list[dict[str, Any]], n_heads: int) -> dict[str, Any]:
    values = [r["relative"] for r in rows]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    layers: dict[int, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (r["dst_layer"], r["dst_head"])):
        layer = layers.setdefault(r["dst_layer"], {"layer": r["dst_layer"], "cells": {}})
        layer["cells"][r["dst_head"]] = {**r, **_colour(r["relative"], low, high)}
    return {"layers": list(layers.values()), "heads": list(range(n_heads)), "low": low,
            "high": high}  # fmt: skip


@router.get("/circuits/head", response_class=HTMLResponse)
async def circuits_head_page(
    request: Request,
    model: ModelId,
    layer: Annotated[int, Query(ge=0)],
    head: Annotated[int, Query(ge=0)],
) -> HTMLResponse:
    """One head's in- and out-edges, each linked to the directions that carry it."""

    def work(a: Atlas) -> dict[str, Any]:
        return a.composition(model, layer=layer, head=head, top=5)

    edges = await run(live_atlas(request), work, time_limit(request))
    return render(request, "circuits_head.html", edges=edges)


# -- matrix --------------------------------------------------------------------------------


@router.get("/matrix", response_class=HTMLResponse)
async def matrix_page(
    request: Request,
    model: ModelId,
    layer: Annotated[int, Query(ge=0)],
    head: MatrixHead,
    page: Annotated[int, Query(ge=1)] = 1,
    circuit: Annotated[Circuit, Query()] = "ov",
) -> HTMLResponse:
    offset = (page - 1) * PAGE_DIRECTIONS

    def work(a: Atlas) -> dict[str, Any]:
        return a.card(model, layer, head, top=PAGE_DIRECTIONS, offset=offset, circuit=circuit)

    card = await run(live_atlas(request), work, time_limit(request))
    pages = max(1, math.ceil(card["rank"] / PAGE_DIRECTIONS)) if card["rank"] else 1
    return render(
        request,
        "matrix.html",
        card=card,
        page=page,
        pages=pages,
        head=head,
        circuit=circuit,
        per_page=PAGE_DIRECTIONS,
    )


@router.get("/matrix/spectrum.svg")
async def matrix_spectrum_svg(
    request: Request,
    model: ModelId,
    layer: Annotated[int, Query(ge=0)],
    head: MatrixHead,
    circuit: Annotated[Circuit, Query()] = "ov",
) -> Response:
    from atlas.interface import singular_values_figure

    def work(a: Atlas) -> Any:
        card = a.card(model, layer, head, top=1, circuit=circuit)
        where = f"layer {layer} " + (f"head {head} {circuit}" if head.isdigit() else head)
        return singular_values_figure(card["spectrum"], f"{where}: singular values")

    return _svg(await run(live_atlas(request), work, time_limit(request)))


# -- direction -----------------------------------------------------------------------------


@router.get("/directions/{direction_id}", response_class=HTMLResponse)
async def direction_page(
    request: Request,
    direction_id: Annotated[int, PathParam(ge=0)],
    trace: Annotated[TraceParams, Query()],
) -> HTMLResponse:
    def work(a: Atlas) -> dict[str, Any]:
        card = a.card(direction_id)
        others = [m for m in a.model_ids() if m != card["model_id"]]
        near = a.search(direction=direction_id, model=card["model_id"])
        across = a.search(direction=direction_id, model=others, space="token") if others else []
        return {
            "card": card,
            "near": [h.to_dict() for h in near],
            "across": [h.to_dict() for h in across],
            "trace": api.trace_steps(a, direction_id, trace),
            "models": a.model_ids(),
            "edit_refusal": a.edit_refusal(card["model_id"]),
        }

    context = await run(live_atlas(request), work, time_limit(request))
    card = context["card"]

    def bars_of(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        return {
            polarity: token_bars(
                [t["token_display"] for t in rows if t["polarity"] == polarity],
                [t["score"] for t in rows if t["polarity"] == polarity],
                n=len(rows),
            )
            for polarity in ("pos", "neg")
        }

    tokens = bars_of(card["tokens"])
    embed_tokens = bars_of(card["embed_tokens"]) if card["embed_tokens"] is not None else None
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for step in context["trace"]["steps"]:
        groups.setdefault((step["model_id"], step["layer"]), []).append(step)
    return render(
        request,
        "direction.html",
        card=card,
        tokens=tokens,
        embed_tokens=embed_tokens,
        near=context["near"],
        across=context["across"],
        trace=trace,
        trace_groups=groups,
        trace_notes=context["trace"]["notes"],
        max_hops=MAX_HOPS,
        edits=EDITS,
        edit_refusal=context["edit_refusal"],
        cli=_reproduce(request, direction_id, trace),
    )


def _reproduce(request: Request, direction_id: int, trace: TraceParams) -> dict[str, str]:
    """The CLI commands and API URLs that give this page's data."""
    from urllib.parse import urlencode

    options = {"min_cos": trace.min_cos, "hops": trace.hops}
    trace_args = [cli_flag("min_cos"), f"{trace.min_cos:g}", cli_flag("hops"), trace.hops]
    return {
        "show": command(request, "show", direction_id),
        "trace": command(request, "trace", direction_id, *trace_args),
        "near": command(request, "search", cli_flag("direction"), direction_id),
        "api_card": f"/api/directions/{direction_id}",
        "api_trace": f"/api/directions/{direction_id}/trace?{urlencode(options)}",
    }


# -- coherence of a bare list ---------------------------------------------------------------


@router.get("/coherence", response_class=HTMLResponse)
async def coherence_page(
    request: Request, q: Annotated[str | None, Query(max_length=MAX_TEXT)] = None
) -> HTMLResponse:
    """Score a typed token list: its percentile among random lists first, then the raw score."""

    def work(_a: Atlas) -> dict[str, Any]:
        if not q:
            return {}
        try:
            return {"result": coherence(q, wait=False)[0].to_dict()}
        except AtlasError as exc:  # a bad list (400), or its null still being computed (503)
            return {"error": str(exc), "status": exc.status}

    context = await run(live_atlas(request), work, time_limit(request))
    return render(
        request,
        "coherence.html",
        context.get("status", 200),
        q=q or "",
        result=context.get("result"),
        error=context.get("error"),
        max_text=MAX_TEXT,
    )


# -- SQL -----------------------------------------------------------------------------------


@router.get("/sql", response_class=HTMLResponse)
async def sql_page(
    request: Request,
    query: Annotated[str | None, Query(max_length=MAX_SQL_TEXT)] = None,
    max_rows: Annotated[int, Query(ge=1, le=SQL_PAGE_ROWS)] = 100,
) -> HTMLResponse:
    q, limit = query, max_rows

    def work(a: Atlas) -> dict[str, Any]:
        schema = a.tables()
        if not q:
            return {"schema": schema}
        try:
            table, truncated = api.sql_result(a, q, limit)
        except AtlasError as exc:
            return {"schema": schema, "error": str(exc), "status": exc.status}
        columns, rows = result_rows(table)
        return {"schema": schema, "columns": columns, "rows": rows, "truncated": truncated}

    context = await run(live_atlas(request), work, time_limit(request))
    downloads = {}
    if q:
        from urllib.parse import urlencode

        for fmt in ("csv", "json", "parquet"):
            download = SqlRequest(query=q, max_rows=MAX_SQL_ROWS, format=fmt)
            downloads[fmt] = "/api/sql?" + urlencode(download.model_dump())
    return render(
        request,
        "sql.html",
        context.get("status", 200),
        q=q or "",
        limit=limit,
        max_limit=SQL_PAGE_ROWS,
        download_rows=MAX_SQL_ROWS,
        default_rows=SQL_ROWS,
        downloads=downloads,
        schema=context["schema"],
        columns=context.get("columns"),
        rows=context.get("rows"),
        truncated=context.get("truncated", False),
        error=context.get("error"),
    )
