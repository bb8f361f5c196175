"""Planted concepts: a head made to write a word is found first by a search for that word,
within its model and across two models with different tokenizers (token space)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import atlas
from atlas.core.tokens import normalized_form
from query.filters import Filters
from query.search import resolve_query, search
from tests.support.planted import PLANTS


def planted_id(a, name: str) -> int:
    layer, head, _ = PLANTS[name]
    return a.sql(
        "SELECT direction_id FROM directions WHERE model_id = ? AND layer = ? AND "
        "head = ? AND kind = 'ov' AND side = 'write' AND sv_index = 0",
        [name, layer, head],
    )["direction_id"][0].as_py()


def test_planted_direction_is_first_within_each_model(small_atlas: Path) -> None:
    with atlas.open(small_atlas) as a:
        for name in PLANTS:
            hits = a.search("fire", model=name, k=3)
            assert hits[0].direction_id == planted_id(a, name)
            assert hits[0].sign == 1 and hits[0].score > 0.9
            assert hits[0].tokens[0] == "fire"


def test_planted_directions_meet_across_tokenizers(small_atlas: Path) -> None:
    with atlas.open(small_atlas) as a:
        hits = a.search("fire", k=4)  # several models: token space by default
        assert {h.space for h in hits} == {"token"}
        assert {h.direction_id for h in hits[:2]} == {planted_id(a, n) for n in PLANTS}
        # more like this: from the BERT-like model's head to the GPT-2-like model's head
        more = a.search(direction=planted_id(a, "bert-like"), model="gpt2-like", space="token", k=1)
        assert more[0].direction_id == planted_id(a, "gpt2-like")


Bags = dict[int, dict[str, float]]


@pytest.fixture(scope="module")
def direction_bags(small_atlas: Path) -> tuple[Bags, dict[int, str]]:
    """Every direction's token bag rebuilt in Python from top_tokens (through W_U) and vocab,
    and its kind: read once for the module's brute-force searches."""
    with atlas.open(small_atlas) as a:
        rows = a.sql(
            "SELECT t.direction_id, v.token, t.score, d.kind FROM top_tokens t "
            "JOIN directions d USING (direction_id) "
            "JOIN vocab v ON v.token_id = t.token_id AND v.model_id = d.model_id "
            "WHERE t.basis = 'unembed'"
        ).to_pylist()
    bags: Bags = defaultdict(lambda: defaultdict(float))
    kinds = {}
    for r in rows:
        key = normalized_form(r["token"])
        if key:
            bags[r["direction_id"]][key] += r["score"]
        kinds[r["direction_id"]] = r["kind"]
    return bags, kinds


def brute_force_token_space(
    direction_bags: tuple[Bags, dict[int, str]], bag: dict[str, float], k: int, filters: Filters
) -> tuple[list[int], np.ndarray]:
    """The k directions whose bags have the highest |cosine| with ``bag``, by hand."""
    bags, kinds = direction_bags
    scores = []
    for did, b in bags.items():
        if filters.kinds and kinds[did] not in filters.kinds:
            continue
        norm = math.sqrt(sum(w * w for w in b.values()))
        s = sum(w * bag.get(t, 0.0) for t, w in b.items()) / norm
        if s != 0:
            scores.append((s, did))
    scores.sort(key=lambda t: (-abs(t[0]), t[1]))
    return [d for _, d in scores[:k]], np.array([s for s, _ in scores[:k]])


@pytest.mark.parametrize("filters", [Filters(), Filters(kinds=("mlp_out",))], ids=["all", "mlp"])
@pytest.mark.parametrize("words", ["fire", "water, ocean", "king queen royal"])
def test_token_space_search_equals_brute_force(
    small_atlas: Path, direction_bags: tuple[Bags, dict[int, str]], words: str, filters: Filters
) -> None:
    with atlas.open(small_atlas) as a:
        query = resolve_query(a.reader, text=words, space="token")
        hits = search(a.reader, query, filters, k=10)
    ids, scores = brute_force_token_space(direction_bags, query.bag, 10, filters)
    assert [h.direction_id for h in hits] == ids
    np.testing.assert_allclose([h.score * h.sign for h in hits], scores, atol=1e-5)


def test_trace_crosses_models_through_token_space(small_atlas: Path) -> None:
    with atlas.open(small_atlas) as a:
        origin = planted_id(a, "bert-like")
        # token-space cosines are lower than residual ones: the two heads share one strong
        # token ("fire") among 40, and nothing else
        steps = a.trace(origin, min_cos=0.12)
        other = [s for s in steps if s.hit.model_id == "gpt2-like"]
        assert planted_id(a, "gpt2-like") in {s.hit.direction_id for s in other}
        assert {s.space for s in other} == {"token"}
        assert all(s.hit.score >= 0.12 for s in other)
