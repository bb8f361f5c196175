"""The approximate index against a brute-force numpy scan, where re-ranking covers < 5%."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.core.index_guard import IndexContract, _ids_problem, vectors_problem
from atlas.core.indexes import (
    APPROXIMATE,
    EXACT,
    RERANK_FACTOR,
    JoinedCodes,
    ResidualIndex,
    build_index,
    index_ids,
    is_exact,
    measured_recall,
    merge_valences,
    read_index,
    write_index,
)

N, D, K = 20_000, 64, 10


def _directions(n: int, d: int, seed: int) -> np.ndarray:
    """Unit vectors with some shared structure (a few strong axes), like singular directions."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(1.5, 0.5, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    cos = vectors @ q
    order = np.lexsort((ids, -np.abs(cos)))[:k]
    return ids[order].tolist()


def test_reranking_covers_under_five_percent_of_the_data() -> None:
    assert RERANK_FACTOR * (K + 1) / N < 0.05


@pytest.mark.slow  # a large index; test_measured_recall_agrees_with_a_numpy_scan stays fast
def test_approximate_search_recall_against_brute_force() -> None:
    vectors = _directions(N, D, seed=0)
    ids = np.arange(1000, 1000 + N, dtype=np.int64)
    index = build_index(vectors, ids, APPROXIMATE)
    assert not is_exact(index)
    queries = _directions(200, D, seed=1)
    recalls, scores_exact = [], True
    for q in queries:
        sims, found = index.search(np.stack([q, -q]), K + 1)
        got_ids, got_sims = merge_valences(found, sims, K)
        truth = _brute_force(vectors, ids, q, K)
        recalls.append(len(set(truth) & set(got_ids.tolist())) / K)
        # every returned score is the exact cosine of the returned direction
        exact = vectors[got_ids - 1000] @ q
        scores_exact &= bool(np.allclose(got_sims, exact, atol=1e-5))
    assert scores_exact
    assert np.mean(recalls) >= 0.95, np.mean(recalls)


def test_one_approximate_shard_answers_as_faiss_refine_does() -> None:
    """The shards' shared rerank, on one shard, is FAISS's own ``IndexRefineFlat``: the codes'
    best ``RERANK_FACTOR * k``, re-ranked by their exact inner products."""
    vectors = _directions(4_000, 32, seed=6)
    shard = build_index(vectors, np.arange(7, 4_007, dtype=np.int64), APPROXIMATE)
    queries = _directions(20, 32, seed=7)
    faiss_sims, faiss_ids = shard.search(queries, K)
    sims, ids = ResidualIndex([shard]).search(queries, K)
    np.testing.assert_array_equal(ids, faiss_ids)
    np.testing.assert_allclose(sims, faiss_sims, atol=1e-6)


def test_approximate_shards_rerank_one_budget_and_give_exact_scores() -> None:
    """Four approximate shards and a small flat one searched as one index: each answer's score
    is its exact cosine, recall holds against a numpy scan, and the approximate shards offer
    one budget of candidates for re-ranking however many they are."""
    vectors = _directions(12_500, 32, seed=8)
    ids = np.arange(100, 12_600, dtype=np.int64)
    cuts = [0, 3_000, 6_000, 9_000, 12_000, 12_500]
    pairs = zip(cuts, cuts[1:], strict=False)
    shards = [build_index(vectors[a:b], ids[a:b], APPROXIMATE) for a, b in pairs]
    assert [is_exact(s) for s in shards] == [False] * 4 + [True]
    index = ResidualIndex(shards)
    joined = JoinedCodes(shards[:4], np.hstack([index_ids(s) for s in shards[:4]]))
    recalls = []
    for q in _directions(30, 32, seed=9):
        both = np.stack([q, -q])
        sims, found = index.search(both, K)
        exact = np.einsum("rkd,rd->rk", vectors[found - 100], both)
        np.testing.assert_allclose(sims, exact, atol=1e-5)
        got, _ = merge_valences(found, sims, K)
        recalls.append(len(set(_brute_force(vectors, ids, q, K)) & set(got.tolist())) / K)
        candidate_sims, candidates = joined.search(both, K)
        assert candidates.shape == (2, RERANK_FACTOR * K)  # one budget, not one per shard
        assert (candidates >= 0).all() and len(np.unique(candidates[0])) == RERANK_FACTOR * K
        exact = np.einsum("rkd,rd->rk", vectors[candidates - 100], both)
        np.testing.assert_allclose(candidate_sims, exact, atol=1e-5)
    assert np.mean(recalls) >= 0.95, np.mean(recalls)


def test_approximate_shards_answer_concurrent_threads_as_one_at_a_time() -> None:
    """A server's worker threads search one index at once (FAISS's ``IndexShards`` and the
    rerank share no state between searches)."""
    import threading

    vectors = _directions(9_000, 32, seed=10)
    ids = np.arange(9_000, dtype=np.int64)
    index = ResidualIndex(
        [
            build_index(vectors[a : a + 3_000], ids[a : a + 3_000], APPROXIMATE)
            for a in (0, 3_000, 6_000)
        ]
    )
    queries = [np.stack([q, -q]) for q in _directions(40, 32, seed=11)]
    alone = [index.search(q, K) for q in queries]
    wrong: list[int] = []

    def searcher(first: int) -> None:
        for j in range(first, len(queries), 4):
            sims, found = index.search(queries[j], K)
            if not (np.array_equal(found, alone[j][1]) and np.allclose(sims, alone[j][0])):
                wrong.append(j)

    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_exact_index_equals_brute_force() -> None:
    vectors = _directions(3000, D, seed=2)
    ids = np.arange(3000, dtype=np.int64)
    index = build_index(vectors, ids, EXACT)
    for q in _directions(20, D, seed=3):
        sims, found = index.search(np.stack([q, -q]), K)
        got, _ = merge_valences(found, sims, K)
        assert got.tolist() == _brute_force(vectors, ids, q, K)


def test_measured_recall_agrees_with_a_numpy_scan() -> None:
    vectors = _directions(N, D, seed=4)
    ids = np.arange(N, dtype=np.int64)
    index = build_index(vectors, ids, APPROXIMATE)
    reported = measured_recall(index, k=K, n_queries=100, seed=0)
    picks = np.random.default_rng(0).choice(N, 100, replace=False)
    recalls = []
    for p in picks:
        truth = [i for i in _brute_force(vectors, ids, vectors[p], K + 1) if i != p][:K]
        sims, found = index.search(np.stack([vectors[p], -vectors[p]]), K + 1)
        got, _ = merge_valences(found, sims, K + 1)
        got = [i for i in got.tolist() if i != p][:K]
        recalls.append(len(set(truth) & set(got)) / K)
    assert abs(reported - float(np.mean(recalls))) < 1e-9


@pytest.mark.parametrize("index_type", [EXACT, APPROXIMATE])
def test_abs_range_search_is_every_cosine_past_the_threshold_in_both_valences(
    index_type: str,
) -> None:
    """Against numpy: two shards (the second small enough to stay flat), ids not from 0."""
    vectors = _directions(3000, D, seed=4)
    ids = np.arange(500, 3500, dtype=np.int64)
    index = ResidualIndex(
        [build_index(vectors[:2000], ids[:2000], index_type),
         build_index(vectors[2000:], ids[2000:], index_type)]
    )  # fmt: skip
    for q in _directions(5, D, seed=5):
        found, sims = index.abs_range_search(q, 0.3)
        cos = vectors @ q
        expected = np.flatnonzero(np.abs(cos) >= 0.3)
        order = np.argsort(found)
        assert found[order].tolist() == ids[expected].tolist()
        assert np.allclose(sims[order], cos[expected], atol=1e-5)
        assert (sims > 0).any() and (sims < 0).any()
    with pytest.raises(ValueError, match="a query of width 3 for an index of width"):
        index.abs_range_search(np.ones(3, np.float32), 0.3)  # FAISS would read past it


def test_a_forked_child_scans_shards_on_threads_of_its_own() -> None:
    """The shards are scanned on a pool of threads; a child forked after the parent used it
    (a forked CLI, a Ray worker) has none of them and must make its own, not wait forever."""
    vectors = _directions(3000, D, seed=12)
    ids = np.arange(3000, dtype=np.int64)
    index = ResidualIndex([build_index(vectors[:1500], ids[:1500], EXACT),
                           build_index(vectors[1500:], ids[1500:], EXACT)])  # fmt: skip
    q = vectors[0]
    expected = sorted(index.abs_range_search(q, 0.3)[0].tolist())  # the parent's pool
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its scan finds what the parent's did
        os._exit(0 if sorted(index.abs_range_search(q, 0.3)[0].tolist()) == expected else 1)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's scan never finished")
    assert os.waitstatus_to_exitcode(done[1]) == 0


@pytest.mark.parametrize("index_type", [EXACT, APPROXIMATE])
def test_reconstruct_batch_gives_each_ids_vector_across_shards(index_type: str) -> None:
    vectors = _directions(3_000, 16, seed=4)
    ids = np.arange(500, 3_500)
    index = ResidualIndex(
        [build_index(vectors[:1_800], ids[:1_800], index_type),
         build_index(vectors[1_800:], ids[1_800:], index_type)]
    )  # fmt: skip
    asked = np.random.default_rng(0).permutation(ids)[:700]
    np.testing.assert_array_equal(index.reconstruct_batch(asked), vectors[asked - 500])
    reversed_shards = ResidualIndex(index.shards[::-1])  # ids no longer ascend by position
    np.testing.assert_array_equal(reversed_shards.reconstruct_batch(asked), vectors[asked - 500])
    np.testing.assert_array_equal(reversed_shards.ids(), ids)
    with pytest.raises(KeyError):
        index.reconstruct_batch(np.array([499]))


def _chunks(ids: np.ndarray, vectors: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    order = np.random.default_rng(1).permutation(len(ids))  # the table's order is not the index's
    return [(ids[order[i : i + 97]], vectors[order[i : i + 97]]) for i in range(0, len(ids), 97)]


def test_vectors_problem_finds_any_difference_from_the_stored_vectors() -> None:
    vectors = _directions(1_000, 16, seed=5)
    ids = np.arange(100, 1_100)
    index = ResidualIndex([build_index(vectors, ids, EXACT)])
    assert vectors_problem(index, _chunks(ids, vectors)) is None
    last_bit = vectors.copy()
    last_bit[3, 7] = np.nextafter(last_bit[3, 7], np.float32(1))
    assert vectors_problem(index, _chunks(ids, last_bit)) == (
        "holds 1 vectors that differ from the stored ones"
    )
    nan = vectors.copy()
    nan[9, 0] = np.nan
    assert vectors_problem(index, _chunks(ids, nan)) is not None
    assert vectors_problem(index, _chunks(ids[1:], vectors[1:])) == (
        "holds 1 vectors the directions table does not have"
    )
    twice = np.concatenate([ids[1:], ids[:1]]), np.concatenate([vectors[1:], vectors[1:2]])
    twice[0][-1] = ids[1]  # one row twice, another missing: as many rows as the index holds
    assert vectors_problem(index, _chunks(*twice)) == (
        "holds 1 vectors the directions table does not have"
    )
    assert vectors_problem(index, _chunks(ids + len(ids), vectors)) == (
        "lacks a direction of the model's directions table"
    )


@pytest.mark.parametrize("index_type", [EXACT, APPROXIMATE])
def test_shards_earlier_versions_wrote_read_and_answer_as_todays(
    index_type: str, tmp_path: Path
) -> None:
    """Shards are written as ``IndexIDMap`` (no reverse map to build on every read); an
    ``IndexIDMap2`` shard, as earlier versions wrote, still reads and answers every kind of
    query as the same shard written today."""
    import faiss

    vectors = _directions(3_000, 32, seed=21)
    ids = np.arange(100, 3_100, dtype=np.int64)
    today, earlier = [], []
    for n, part in enumerate([slice(0, 1_800), slice(1_800, 3_000)]):
        shard = build_index(vectors[part], ids[part], index_type)
        assert type(shard) is faiss.IndexIDMap
        write_index(shard, tmp_path / f"today-{n}.faiss")
        today.append(read_index(tmp_path / f"today-{n}.faiss"))
        # the two files differ only in their tag, as FAISS writes them
        written = (tmp_path / f"today-{n}.faiss").read_bytes()
        assert written[:4] == b"IxMp"
        (tmp_path / f"earlier-{n}.faiss").write_bytes(b"IxM2" + written[4:])
        earlier.append(read_index(tmp_path / f"earlier-{n}.faiss"))
    assert all(type(s) is faiss.IndexIDMap2 for s in earlier)
    mixed = ResidualIndex([earlier[0], today[1]])
    queries = _directions(6, 32, seed=22)
    allowed = ids[::7]
    for index in (ResidualIndex(earlier), mixed):
        reference = ResidualIndex(today)
        for got, want in [
            (index.search(queries, K), reference.search(queries, K)),
            (index.search_among(queries, K, allowed), reference.search_among(queries, K, allowed)),
            (index.abs_range_search(queries[0], 0.3), reference.abs_range_search(queries[0], 0.3)),
        ]:
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(index.reconstruct_batch(ids[::-5]), vectors[ids[::-5] - 100])


@settings(max_examples=200, deadline=None)
@given(
    first=st.integers(0, 50),
    ids=st.lists(st.integers(0, 70), min_size=1, max_size=30),
)
def test_an_index_holds_exactly_the_models_ids_checked_without_a_sort(
    first: int, ids: list[int]
) -> None:
    """The one-pass check agrees with the sorted oracle: n ids are the model's range exactly
    when, sorted, they are first..first + n - 1."""
    contract = IndexContract("m", 4, first, len(ids), None)
    problem = _ids_problem(np.array(ids, np.int64), contract)
    assert (problem is None) == (sorted(ids) == list(range(first, first + len(ids))))
    if problem and min(ids) >= first and max(ids) < first + len(ids):
        missing = min(set(range(first, first + len(ids))) - set(ids))
        assert problem == f"holds an id twice and lacks direction {missing}"
