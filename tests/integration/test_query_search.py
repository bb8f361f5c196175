"""Search against a brute-force numpy scan over the stored vectors, with every filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import atlas
from query.filters import Filters
from query.search import resolve_query, search
from tests.support import oracle


@pytest.fixture(scope="module")
def a(minilm_atlas: Path):
    with atlas.open(minilm_atlas) as handle:
        yield handle


@pytest.fixture(scope="module")
def table(a) -> dict[str, np.ndarray]:
    rows = a.sql(
        "SELECT direction_id, kind, layer, head, side, sv_index, sigma, vector "
        "FROM directions ORDER BY direction_id"
    ).to_pydict()
    out = {k: np.array(v) for k, v in rows.items() if k not in ("vector", "head")}
    out["head"] = np.array([-1 if h is None else h for h in rows["head"]])
    out["vector"] = np.array(rows["vector"], dtype=np.float32)
    return out


def brute_force(
    table, q, filters: Filters, k: int, exclude: int | None = None, min_score: float = 0.0
) -> tuple[list[int], np.ndarray]:
    mask = np.ones(len(table["direction_id"]), bool)
    if filters.kinds:
        mask &= np.isin(table["kind"], filters.kinds)
    if filters.layers:
        mask &= table["layer"] >= filters.layers[0]
        if filters.layers[1] is not None:
            mask &= table["layer"] < filters.layers[1]
    if filters.heads:
        mask &= np.isin(table["head"], filters.heads)
    if filters.side:
        mask &= table["side"] == filters.side
    if filters.max_sv_index is not None:
        mask &= table["sv_index"] <= filters.max_sv_index
    if filters.min_sigma is not None:
        mask &= table["sigma"] >= filters.min_sigma
    if exclude is not None:
        mask &= table["direction_id"] != exclude
    scores = table["vector"][mask] @ q
    ids = table["direction_id"][mask]
    keep = np.abs(scores) >= min_score
    ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -np.abs(scores)))[:k]
    return ids[order].tolist(), scores[order]


FILTERS = [
    Filters(),
    Filters(kinds=("ov",)),
    Filters(kinds=("mlp_in", "mlp_out")),
    Filters(layers=(2, 4)),
    Filters(layers=(3, None)),
    Filters(heads=(0, 5)),
    Filters(side="read"),
    Filters(max_sv_index=3),
    Filters(min_sigma=1.0),
    Filters(kinds=("ov",), layers=(1, 5), heads=(2,), side="write", max_sv_index=10),
]


def assert_same(hits, ids, scores, atol: float = 1e-5) -> None:
    assert [h.direction_id for h in hits] == ids
    got = np.array([h.score * h.sign for h in hits])
    np.testing.assert_allclose(got, scores, atol=atol)


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: repr(f)[8:60])
@pytest.mark.parametrize("words", ["fire", "king, queen", "water ocean sea"])
def test_text_search_equals_brute_force(a, table, filters: Filters, words: str) -> None:
    """The query is built here from the tokens (not taken from the code under test)."""
    query = resolve_query(a.reader, text=words)
    hits = search(a.reader, query, filters, k=15)
    q = oracle_query(words.replace(",", " ").split())
    # the checkpoint's float64 unembedding against the atlas's float32 copy: 1e-4 in a cosine
    assert_same(hits, *brute_force(table, q, filters, 15), atol=1e-4)


@pytest.mark.parametrize("filters", FILTERS[:5], ids=lambda f: repr(f)[8:60])
def test_direction_search_equals_brute_force(a, table, filters: Filters) -> None:
    for direction in (432, 8724, 100):
        query = resolve_query(a.reader, direction=direction)
        hits = search(a.reader, query, filters, k=12)
        q = table["vector"][direction]
        assert_same(hits, *brute_force(table, q, filters, 12, exclude=direction))


@pytest.mark.parametrize("filters", FILTERS[::3], ids=lambda f: repr(f)[8:60])
def test_vector_search_equals_brute_force(a, table, filters: Filters, tmp_path: Path) -> None:
    q = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    query = resolve_query(a.reader, vector=tmp_path / "q.npy")
    hits = search(a.reader, query, filters, k=20, min_score=0.05)
    assert_same(hits, *brute_force(table, q / np.linalg.norm(q), filters, 20, min_score=0.05))


def oracle_query(words: list[str]) -> np.ndarray:
    """Independent oracle of a text query: MiniLM's safetensors W_U, centered; per word the
    unit mean of the columns of every token whose lower-cased, marker-stripped form is the word
    (fire, ##fire); then the unit mean over the words."""
    vocab = oracle.vocabulary()
    W_Uc = oracle.centered_unembedding()
    per_word = []
    for word in words:
        ids = [i for i, t in enumerate(vocab) if t.removeprefix("##").lower() == word]
        assert ids, word
        mean = W_Uc[:, ids].mean(axis=1)
        per_word.append(mean / np.linalg.norm(mean))
    expected = np.mean(per_word, axis=0)
    return (expected / np.linalg.norm(expected)).astype(np.float32)


def test_text_query_is_the_centered_unembedding_of_every_variant(a) -> None:
    vocab = oracle.vocabulary()
    for word in ("fire", "water"):
        assert sum(t.removeprefix("##").lower() == word for t in vocab) >= 2, "word and ##word"
    q = resolve_query(a.reader, text="fire, water").vectors["minilm"]
    assert float(q @ oracle_query(["fire", "water"])) > 0.9999


def test_hits_show_the_matching_valence(a) -> None:
    hits = search(a.reader, resolve_query(a.reader, text="fire"), k=10)
    assert {h.sign for h in hits} == {1, -1}
    for h in hits:
        assert "fire" in " ".join(h.tokens) or "fire" not in " ".join(h.opposite_tokens)
    assert "fire" in hits[0].tokens
