"""Why a search or trace found nothing: said in one line, never an empty table (issue 23).

Asked only when a result came back empty, so a query that finds something pays nothing. A
filter that no direction of any model searched passes (a layer or head no model has, a kind
none has, ...) is a :class:`NoMatch` naming the filter, each model and what the model has.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from atlas.core.errors import NoMatch
from atlas.core.reader import Reader
from query.filters import Filters
from query.vectors import listed

PARAMS = {"kinds": "kind", "layers": "layer", "heads": "head"}  # Filters' names -> parameters


def check_filters(a: Reader, models: list[str], filters: Filters) -> None:
    """A :class:`NoMatch` when no direction of ``models`` passes ``filters``."""
    if not filters.active or any(_passes(a, m, filters) for m in models):
        return
    alone = [f.name for f in fields(Filters) if getattr(filters, f.name) is not None]
    culprits = [
        name for name in alone if not any(_passes(a, m, _only(filters, name)) for m in models)
    ]
    if not culprits:
        raise NoMatch(
            f"no direction of {listed(models)} passes these filters together: "
            + ", ".join(_describe(filters, name) for name in alone),
            hint="loosen one of them",
        )
    name = culprits[0]
    ranges = [f"{m} {_what_it_has(a, m, name)}" for m in models[:5]]
    more = f" and {len(models) - 5} more" if len(models) > 5 else ""
    raise NoMatch(
        f"{_describe(filters, name)} matches no direction of {listed(models)} "
        f"({'; '.join(ranges)}{more})",
        param=PARAMS.get(name, name),
    )


def check_bag(a: Reader, models: list[str], bag: dict[str, float], filters: Filters) -> None:
    """A :class:`NoMatch` when words the vocabularies have are among no direction's kept top
    or bottom tokens (a token-space query can meet a direction only there)."""
    for model_id in models:
        condition, params = filters.where()
        hit = a.sql(
            f"SELECT 1 FROM {a.relation(model_id, 'token_bags')} "
            f"JOIN {a.relation(model_id, 'directions')} USING (direction_id) "
            f"WHERE token_norm IN (SELECT unnest(?)) AND {condition} LIMIT 1",
            [list(bag), *params],
        )
        if hit.num_rows:
            return
    raise NoMatch(
        f"{', '.join(bag)}: among no direction's top or bottom tokens in {listed(models)}"
    )


def _passes(a: Reader, model_id: str, filters: Filters) -> bool:
    condition, params = filters.where()
    rows = a.sql(
        f"SELECT 1 FROM {a.relation(model_id, 'directions')} WHERE {condition} LIMIT 1", params
    )
    return rows.num_rows > 0


def _only(filters: Filters, name: str) -> Filters:
    return replace(Filters(), **{name: getattr(filters, name)})


def _describe(filters: Filters, name: str) -> str:
    value: Any = getattr(filters, name)
    if name == "layers":
        start, stop = value
        if stop == start + 1:
            return f"layer {start}"
        return f"layers {start}:{'' if stop is None else stop}"
    if name == "heads":
        return f"head {', '.join(map(str, value))}"
    if name == "kinds":
        return f"kind {', '.join(value)}"
    if name == "max_sv_index":
        return f"sv_index <= {value}"
    if name == "min_sigma":
        return f"sigma >= {value:g}"
    return f"{name} {value}"


# What a model has, per filter: an aggregate over its directions.
_HAS = {
    "layers": ("layers {}-{}", "min(layer), max(layer)"),
    "heads": ("heads {}-{}", "min(head), max(head)"),
    "kinds": ("kinds {}", "string_agg(DISTINCT kind, ', ' ORDER BY kind)"),
    "side": ("sides {}", "string_agg(DISTINCT side, ', ' ORDER BY side)"),
    "max_sv_index": ("sv_index from {}", "min(sv_index)"),
    "min_sigma": ("sigma up to {:.4g}", "max(sigma)"),
}


def _what_it_has(a: Reader, model_id: str, name: str) -> str:
    template, aggregate = _HAS[name]
    row = a.sql(f"SELECT {aggregate} FROM {a.relation(model_id, 'directions')}").to_pylist()[0]
    values = list(row.values())
    if any(v is None for v in values):
        return "has no heads" if name == "heads" else "has no directions"
    return "has " + template.format(*values)
