"""Concept tracing: from one direction to its neighbours, hop by hop, across layers and models.

Within the direction's model neighbours are residual-space cosines; in other models they are
token-space cosines (``atlas.core.token_space``). ``hops`` > 1 expands the neighbours' neighbours,
so a concept can be followed through the network beyond one cosine threshold. Each found
direction records the hop it was reached at, the direction it was reached from, the cosine of
that step and its valence relative to the origin (signs multiply along the path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.core.reader import Reader, check_direction_id
from query.filters import Filters
from query.nomatch import check_filters
from query.search import HIT_FIELDS, Hit, describe, nearest_tokens, scored_from_store
from query.vectors import direction_bag, direction_vector

DEFAULT_MIN_COS = 0.3
# (hop, parent, |cos| of the step, valence relative to the origin, space)
_Found = tuple[int, int | None, float, int, str]
# Told after each direction a hop expands: (hop, directions expanded, directions this hop).
TraceProgress = Callable[[int, int, int], None]


@dataclass
class TraceStep:
    hit: Hit  # score = |cos| of the step that reached it, sign = valence relative to the origin
    hop: int
    parent: int | None
    space: str

    def to_dict(self) -> dict[str, Any]:
        """One flat record: the hit's fields, and ``hop``, ``parent``, ``via`` (the space of
        the step) and ``cos`` (its |cos|)."""
        return {**self.hit.to_dict(), "hop": self.hop, "parent": self.parent,
                "via": self.space, "cos": self.hit.score}  # fmt: skip


TRACE_FIELDS = [*HIT_FIELDS, "hop", "parent", "via", "cos"]  # a step's JSON record


class Trace(list[TraceStep]):
    """A trace's steps, with the notes a reader of them should know (also given as warnings
    by ``Atlas.trace``): that the limit cut it, or that nothing passed ``min_cos``."""

    def __init__(self, steps: list[TraceStep], notes: list[str]):
        super().__init__(steps)
        self.notes = notes


def trace(
    a: Reader,
    direction_id: int,
    min_cos: float,
    hops: int,
    filters: Filters | None = None,
    *,
    limit: int,
    across_models: bool = True,
    models: tuple[str, ...] | None = None,
    progress: TraceProgress | None = None,
) -> Trace:
    """Every direction within ``hops`` steps of cosine >= ``min_cos`` (either valence), at most
    ``limit`` of them, the origin included (the strongest steps of the last hop are kept, and
    a note says how many were left out).

    ``models`` keeps the walk inside those models (the origin is always reported), so
    ``limit`` counts only directions that can be returned. The values are checked by the
    caller (:class:`atlas.params.TraceParams`).
    """
    direction_id = check_direction_id(direction_id)
    filters = filters or Filters()
    home = a.model_of(direction_id)  # an unknown id fails here
    for m in models or ():
        a.require_model(m)
    walk = _Walk(filters, across_models, models)
    found: dict[int, _Found] = {direction_id: (0, None, 1.0, 1, "residual")}
    frontier = [direction_id]
    notes: list[str] = []
    for hop in range(1, hops + 1):
        candidates: dict[int, _Found] = {}
        for done, node in enumerate(frontier, 1):
            node_sign = found[node][3]
            for nid, cos, space in _neighbours(a, node, min_cos, walk):
                if nid in found:
                    continue
                step: _Found = (hop, node, abs(cos), node_sign * (1 if cos >= 0 else -1), space)
                if nid not in candidates or step[2] > candidates[nid][2]:
                    candidates[nid] = step
            if progress is not None:
                progress(hop, done, len(frontier))
        ranked = sorted(candidates.items(), key=lambda kv: (-kv[1][2], kv[0]))
        room = limit - len(found)
        for nid, step in ranked[:room]:
            found[nid] = step
        frontier = [nid for nid, _ in ranked[:room]]
        if len(ranked) > room:
            notes.append(
                f"cut at the limit of {limit} directions (the origin included): "
                f"{len(ranked) - room} more at hop {hop} pass min_cos {min_cos:g}, and any "
                "beyond them were not followed"
            )
        if not frontier or len(ranked) >= room:
            break
    if len(found) == 1 and not notes:  # nothing in reach (not a limit of 1)
        check_filters(a, walk.searched(a, home), filters)
        notes.append(f"no direction has |cos| >= {min_cos:g} with direction {direction_id}")
    return Trace(_steps(a, found), notes)


@dataclass(frozen=True)
class _Walk:
    """Where a trace may step: the filters, and which models."""

    filters: Filters
    across_models: bool
    models: tuple[str, ...] | None

    def allows(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models

    def searched(self, a: Reader, home: str) -> list[str]:
        """The models the walk may step into from ``home``."""
        reachable = a.model_ids() if self.across_models else [home]
        return [m for m in reachable if self.allows(m)]


def _neighbours(a: Reader, node: int, min_cos: float, walk: _Walk) -> list[tuple[int, float, str]]:
    model_id = a.model_of(node)
    out = []
    if walk.allows(model_id):
        pairs = _residual_range(a, model_id, node, min_cos, walk.filters)
        out = [(i, c, "residual") for i, c in pairs]
    others = [m for m in a.model_ids() if m != model_id and walk.allows(m)]
    # the direction's token bag is read only when another model is there to search with it
    if walk.across_models and others and (bag := direction_bag(a, node)):
        for other in others:
            ids, sims = nearest_tokens(a, other, bag, walk.filters, k=1_000_000)
            out += [
                (int(i), float(s), "token")
                for i, s in zip(ids, sims, strict=True)
                if abs(s) >= min_cos
            ]
    return out


def _residual_range(
    a: Reader, model_id: str, node: int, min_cos: float, filters: Filters
) -> list[tuple[int, float]]:
    """Every direction of the model whose |cos| with ``node`` is at least ``min_cos``."""
    index = a.residual_index(model_id)
    _, q = direction_vector(a, node)
    found, sims = index.abs_range_search(q, min_cos)
    pairs = {int(i): float(s) for i, s in zip(found, sims, strict=True)}
    pairs.pop(node, None)
    if pairs:  # every cosine shown is recomputed from the stored vectors
        ids = np.fromiter(pairs, np.int64, len(pairs))
        exact = scored_from_store(a, model_id, q, ids, np.array(list(pairs.values())))
        pairs = {int(i): float(c) for i, c in zip(ids, exact, strict=True) if abs(c) >= min_cos}
    if filters.active:
        allowed = set(filters.allowed_ids(a, model_id).tolist())
        pairs = {i: c for i, c in pairs.items() if i in allowed}
    return list(pairs.items())


def _steps(a: Reader, found: dict[int, _Found]) -> list[TraceStep]:
    scored = [(step[2] * step[3], i, a.model_of(i)) for i, step in found.items()]
    hits = describe(a, scored, "residual")
    steps = [
        TraceStep(
            hit=h,
            hop=found[h.direction_id][0],
            parent=found[h.direction_id][1],
            space=found[h.direction_id][4],
        )
        for h in hits
    ]
    for s in steps:
        s.hit.space = s.space
    steps.sort(key=lambda s: (s.hit.model_id, s.hit.layer, s.hop, -s.hit.score))
    return steps
