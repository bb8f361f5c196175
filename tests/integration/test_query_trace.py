"""Tracing against brute-force breadth-first search over every stored vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import atlas
from atlas.params import MAX_TRACE_ROWS


@pytest.fixture(scope="module")
def vectors(minilm_atlas: Path) -> tuple[np.ndarray, np.ndarray]:
    with atlas.open(minilm_atlas) as a:
        rows = a.sql("SELECT direction_id, vector FROM directions ORDER BY direction_id")
    return rows["direction_id"].to_numpy(), np.array(rows["vector"].to_pylist(), np.float32)


def brute_force_bfs(ids, vecs, origin: int, min_cos: float, hops: int) -> list[set[int]]:
    seen, frontier, levels = {origin}, {origin}, []
    for _ in range(hops):
        cos = vecs[list(frontier)] @ vecs.T
        reached = set(ids[(np.abs(cos) >= min_cos).any(axis=0)].tolist()) - seen
        levels.append(reached)
        seen |= reached
        frontier = reached
        if not frontier:
            break
    return levels


# min_cos per origin: three hops reach under MAX_TRACE_ROWS directions (with QK directions in
# the atlas, 432 reaches 2902 at 0.2, 2497 reaches 4258)
@pytest.mark.parametrize(
    ("origin", "min_cos"),
    [(432, 0.22), pytest.param(2497, 0.25, marks=pytest.mark.slow), (8724, 0.2)],
)
def test_trace_equals_brute_force_bfs(
    minilm_atlas: Path, vectors, origin: int, min_cos: float
) -> None:
    ids, vecs = vectors
    with atlas.open(minilm_atlas) as a:
        steps = a.trace(origin, min_cos=min_cos, hops=3, limit=MAX_TRACE_ROWS)
    levels = brute_force_bfs(ids, vecs, origin, min_cos, 3)
    assert 0 < sum(len(level) for level in levels) < MAX_TRACE_ROWS  # nothing cut
    for hop, expected in enumerate(levels, start=1):
        assert {s.hit.direction_id for s in steps if s.hop == hop} == expected
    for s in steps:
        if s.hop == 1:
            cos = float(vecs[origin] @ vecs[s.hit.direction_id])
            assert s.hit.sign == np.sign(cos) and abs(s.hit.score - abs(cos)) < 1e-5
        if s.hop > 1:  # the valence relative to the origin multiplies along the path
            parent = next(p for p in steps if p.hit.direction_id == s.parent)
            cos = float(vecs[s.parent] @ vecs[s.hit.direction_id])
            assert s.hit.sign == parent.hit.sign * np.sign(cos)
    layers = [(s.hit.model_id, s.hit.layer) for s in steps]
    assert layers == sorted(layers)  # grouped by layer


def test_trace_limit_and_bad_input(minilm_atlas: Path) -> None:
    with atlas.open(minilm_atlas) as a:
        steps = a.trace(432, min_cos=0.1, hops=3, limit=25)
        assert len(steps) == 25  # the origin and 24 more
        with pytest.raises(atlas.AtlasError, match="no direction"):
            a.trace(10**9)
        with pytest.raises(atlas.AtlasError, match="min_cos"):
            a.trace(432, min_cos=0)
