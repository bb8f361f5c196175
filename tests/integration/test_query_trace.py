"""Tracing against brute-force breadth-first search over every stored vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import atlas


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


@pytest.mark.parametrize("origin", [432, 2497, 8724])
def test_trace_equals_brute_force_bfs(minilm_atlas: Path, vectors, origin: int) -> None:
    ids, vecs = vectors
    with atlas.open(minilm_atlas) as a:
        steps = a.trace(origin, min_cos=0.2, hops=3, limit=100_000)
    levels = brute_force_bfs(ids, vecs, origin, 0.2, 3)
    assert sum(len(level) for level in levels) > 0
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
        assert len(steps) == 26  # the origin and 25 more
        with pytest.raises(atlas.AtlasError, match="no direction"):
            a.trace(10**9)
        with pytest.raises(atlas.AtlasError, match="min_cos"):
            a.trace(432, min_cos=0)
