"""Fuzzing concept search with hypothesis: any text, k and space give hits or one AtlasError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import atlas
from atlas.core.errors import AtlasError
from query.limits import K

TEXT = st.text(st.sampled_from("0123456789:,-+ _\t\n;'\"#Ġ▁٣") | st.characters(), max_size=30)
WORDS = st.sampled_from(["fire", "Water", "KING", " city ", "##ing", "ü", "über"]) | TEXT


@pytest.fixture(scope="module")
def minilm(minilm_atlas: Path) -> Iterator[atlas.Atlas]:
    handle = atlas.open(minilm_atlas)
    yield handle
    handle.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(TEXT, st.lists(WORDS, max_size=3), st.lists(WORDS, max_size=4).map(" , ".join)),
    st.integers(min_value=1, max_value=50) | st.integers(min_value=-3, max_value=K.high + 3),
    st.sampled_from(["auto", "residual", "token", "nonsense"]),
)
def test_search_with_any_text(
    minilm: atlas.Atlas, text: str | list[str], k: int, space: str
) -> None:
    try:
        hits = minilm.search(text, k=k, space=space)
    except AtlasError:
        return
    assert K.low <= k <= K.high and len(hits) <= k
    assert all(0 <= h.direction_id < 9216 for h in hits)
