"""Concept tracing: from one direction to its neighbours, hop by hop, across layers and models.

Within the direction's model neighbours are residual-space cosines; in other models they are
token-space cosines (``atlas.token_space``). ``hops`` > 1 expands the neighbours' neighbours,
so a concept can be followed through the network beyond one cosine threshold. Each found
direction records the hop it was reached at, the direction it was reached from, the cosine of
that step and its valence relative to the origin (signs multiply along the path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atlas.errors import AtlasError
from atlas.handle import Atlas
from atlas.indexes import full_vectors, index_ids, reconstruct
from query.filters import Filters
from query.search import Hit, describe, nearest_tokens
from query.vectors import direction_bag

DEFAULT_LIMIT = 500
# (hop, parent, |cos| of the step, valence relative to the origin, space)
_Found = tuple[int, int | None, float, int, str]


@dataclass
class TraceStep:
    hit: Hit  # score = |cos| of the step that reached it, sign = valence relative to the origin
    hop: int
    parent: int | None
    space: str


def trace(
    a: Atlas,
    direction_id: int,
    min_cos: float = 0.3,
    hops: int = 1,
    filters: Filters | None = None,
    limit: int = DEFAULT_LIMIT,
    across_models: bool = True,
) -> list[TraceStep]:
    """Every direction within ``hops`` steps of cosine >= ``min_cos`` (either valence)."""
    if not 0.0 < min_cos <= 1.0:
        raise AtlasError("--min-cos must be in (0, 1]")
    if hops < 1:
        raise AtlasError("--hops must be at least 1")
    filters = filters or Filters()
    a.model_of(direction_id)  # an unknown id fails here
    found: dict[int, _Found] = {direction_id: (0, None, 1.0, 1, "residual")}
    frontier = [direction_id]
    for hop in range(1, hops + 1):
        candidates: dict[int, _Found] = {}
        for node in frontier:
            node_sign = found[node][3]
            for nid, cos, space in _neighbours(a, node, min_cos, filters, across_models):
                if nid in found:
                    continue
                step: _Found = (hop, node, abs(cos), node_sign * (1 if cos >= 0 else -1), space)
                if nid not in candidates or step[2] > candidates[nid][2]:
                    candidates[nid] = step
        ranked = sorted(candidates.items(), key=lambda kv: (-kv[1][2], kv[0]))
        room = limit - (len(found) - 1)
        for nid, step in ranked[:room]:
            found[nid] = step
        frontier = [nid for nid, _ in ranked[:room]]
        if not frontier or room <= len(ranked):
            break
    return _steps(a, found)


def _neighbours(
    a: Atlas, node: int, min_cos: float, filters: Filters, across_models: bool
) -> list[tuple[int, float, str]]:
    model_id = a.model_of(node)
    out = [(i, c, "residual") for i, c in _residual_range(a, model_id, node, min_cos, filters)]
    if across_models:
        bag = direction_bag(a, node)
        for other in a.model_ids():
            if other == model_id or not bag:
                continue
            ids, sims = nearest_tokens(a, other, bag, filters, k=1_000_000)
            out += [
                (int(i), float(s), "token")
                for i, s in zip(ids, sims, strict=True)
                if abs(s) >= min_cos
            ]
    return out


def _residual_range(
    a: Atlas, model_id: str, node: int, min_cos: float, filters: Filters
) -> list[tuple[int, float]]:
    """Every direction of the model whose |cos| with ``node`` is at least ``min_cos``."""
    index = a.residual_index(model_id)
    q = reconstruct(index, np.array([node]))[0]
    both = np.stack([q, -q]).astype(np.float32)
    lims, sims, positions = full_vectors(index).range_search(both, min_cos)
    ids = index_ids(index)[positions]
    pairs = {int(i): float(s) for i, s in zip(ids[: lims[1]], sims[: lims[1]], strict=True)}
    pairs.update({int(i): -float(s) for i, s in zip(ids[lims[1] :], sims[lims[1] :], strict=True)})
    pairs.pop(node, None)
    if filters.active:
        allowed = set(filters.allowed_ids(a, model_id).tolist())
        pairs = {i: c for i, c in pairs.items() if i in allowed}
    return list(pairs.items())


def _steps(a: Atlas, found: dict[int, _Found]) -> list[TraceStep]:
    hits = describe(a, [(step[2] * step[3], i) for i, step in found.items()], "residual")
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
