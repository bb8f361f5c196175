"""Fuzzing concept search with hypothesis: any text, k and space give hits or one AtlasError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import atlas
from atlas.core.errors import AtlasError, NoMatch
from atlas.params import MAX_K

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
    st.integers(min_value=1, max_value=50) | st.integers(min_value=-3, max_value=MAX_K + 3),
    st.sampled_from(["auto", "residual", "token", "nonsense"]),
)
def test_search_with_any_text(
    minilm: atlas.Atlas, text: str | list[str], k: int, space: str
) -> None:
    """A refusal has a reason the input gives; an answer is k hits ranked by |cos|."""
    bad_k, bad_space = not 1 <= k <= MAX_K, space == "nonsense"
    try:
        hits = minilm.search(text, k=k, space=space)
    except NoMatch as exc:
        assert not bad_space and "minilm" in str(exc)  # (a bad k may be named second)
        return
    except AtlasError as exc:
        message = str(exc)
        reasons = {
            "k": bad_k and message.startswith("k: "),
            "space": bad_space and "nonsense" in message,
            # no words at all: the search has no query (an empty text is no text)
            "text": "empty search text" in message
            or "give exactly one of" in message
            or message.startswith("text: "),  # not Unicode text: a lone surrogate
        }
        assert any(reasons.values()), message
        return
    assert not bad_k and not bad_space
    assert 1 <= len(hits) <= k
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 + 1e-6 for s in scores)
    assert len({h.direction_id for h in hits}) == len(hits)
    assert all(0 <= h.direction_id < 13824 and h.sign in (1, -1) for h in hits)
