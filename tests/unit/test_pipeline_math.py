"""The ingest's math stages, one at a time, against numpy on small random matrices.

``full_svd`` (MLP matrices), ``project`` (top and bottom tokens) and ``assemble`` (the sign
rule, sides, order and ids of the stored rows), and ``decompose`` from the weights of a toy
model to the stored triples: each checked against numpy's SVD of the explicit matrix and a
plain numpy projection through the centered unembedding, never against the code's own output.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from atlas.core.contract import JUDGED_SIDE, SIDES_OF
from atlas.models.svd import full_svd
from ingest.assemble import IdBase, assemble, residual_vectors
from ingest.decompose import decompose
from ingest.project import project
from ingest.weights import ModelWeights, centered_unembedding

N_LAYERS, N_HEADS, D_MODEL, D_HEAD, D_MLP, D_VOCAB, TOP_K = 2, 3, 12, 4, 20, 50, 5


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_full_svd_equals_numpy_and_keeps_the_first_rank_triples() -> None:
    m = _rng().standard_normal((3, 9, 6))
    svd = full_svd(torch.tensor(m), rank=4)
    assert svd.U.shape == (3, 9, 4) and svd.S.shape == (3, 4) and svd.V.shape == (3, 6, 4)
    for b in range(3):
        u, s, vh = np.linalg.svd(m[b], full_matrices=False)
        np.testing.assert_allclose(svd.S[b].numpy(), s[:4], rtol=1e-5)
        # U's columns read (input space), V's write (output space): u_i^T M = s_i v_i^T
        for i in range(4):
            ui, vi = svd.U[b, :, i].double().numpy(), svd.V[b, :, i].double().numpy()
            np.testing.assert_allclose(ui @ m[b], s[i] * vi, atol=1e-5 * s[0])
            assert abs(abs(ui @ u[:, i]) - 1) < 1e-5 and abs(abs(vi @ vh[i]) - 1) < 1e-5


def test_centered_unembedding_removes_the_mean_over_the_vocabulary() -> None:
    W_U = _rng(1).standard_normal((D_MODEL, D_VOCAB)) + 3.0
    got = centered_unembedding(torch.tensor(W_U)).double().numpy()
    np.testing.assert_allclose(got, W_U - W_U.mean(axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("chunk_bytes", [None, 4 * D_VOCAB * 3])  # one chunk, chunks of 3 rows
def test_project_gives_numpys_top_and_bottom_tokens(
    chunk_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingest.project

    if chunk_bytes is not None:
        monkeypatch.setattr(ingest.project, "CHUNK_BYTES", chunk_bytes)
    vectors, W_U = (
        _rng(2).standard_normal((10, D_MODEL)),
        _rng(3).standard_normal((D_MODEL, D_VOCAB)),
    )
    seen: list[int] = []
    got = project(torch.tensor(vectors).float(), torch.tensor(W_U).float(), TOP_K, seen.append)
    scores = vectors @ W_U
    order = np.argsort(-scores, axis=1)
    np.testing.assert_array_equal(got.top_ids, order[:, :TOP_K])
    np.testing.assert_array_equal(got.bottom_ids, order[:, ::-1][:, :TOP_K])
    np.testing.assert_allclose(got.top_scores, np.take_along_axis(scores, order[:, :TOP_K], 1),
                               rtol=1e-4)  # fmt: skip
    assert sum(seen) == 10 and (chunk_bytes is None or len(seen) == 4)


def _toy_weights(seed: int = 4) -> ModelWeights:
    g = torch.Generator().manual_seed(seed)
    W_U = torch.randn(D_MODEL, D_VOCAB, generator=g) + 1.0  # an offset every token shares
    return ModelWeights(
        W_Q=torch.randn(N_LAYERS, N_HEADS, D_MODEL, D_HEAD, generator=g),
        W_K=torch.randn(N_LAYERS, N_HEADS, D_MODEL, D_HEAD, generator=g),
        W_V=torch.randn(N_LAYERS, N_HEADS, D_MODEL, D_HEAD, generator=g),
        W_O=torch.randn(N_LAYERS, N_HEADS, D_HEAD, D_MODEL, generator=g),
        mlp={
            "mlp_in": torch.randn(N_LAYERS, D_MODEL, D_MLP, generator=g),
            "mlp_out": torch.randn(N_LAYERS, D_MLP, D_MODEL, generator=g),
        },
        W_U=centered_unembedding(W_U),
    )


def _explicit(w: ModelWeights, kind: str, layer: int, head: int | None) -> np.ndarray:
    if kind == "ov":
        return (w.W_V[layer, head].double() @ w.W_O[layer, head].double()).numpy()
    if kind == "qk":
        return (w.W_Q[layer, head].double() @ w.W_K[layer, head].double().T).numpy()
    return w.mlp[kind][layer].double().numpy()


@pytest.fixture(scope="module")
def toy() -> tuple[ModelWeights, np.ndarray, dict[str, pa.Table]]:
    w = _toy_weights()
    groups = decompose(w)
    vectors = residual_vectors(groups)
    scores = project(vectors, w.W_U, TOP_K)
    n_dirs = [len(SIDES_OF[g.kind]) * g.svd.S.numel() for g in groups]
    starts = np.cumsum([0, *n_dirs])[:-1]
    n_mats = np.cumsum([0, *[g.svd.S.shape[0] for g in groups]])[:-1]
    bases = [IdBase(100 + int(m), 1000 + int(d)) for m, d in zip(n_mats, starts, strict=True)]
    vocabulary = pa.array([f"t{i}" for i in range(D_VOCAB)])
    rows = assemble("toy", groups, vectors, scores, vocabulary, vocabulary, bases, 1e-3, TOP_K)
    W_Uc = w.W_U.double().numpy()
    tables = {"directions": rows.directions, "matrices": rows.matrices, "top": rows.top_tokens}
    return w, W_Uc, tables


def _rows(table: pa.Table, **where: object) -> list[dict]:
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in where.items())]


@pytest.mark.parametrize(
    ("kind", "layer", "head"),
    [
        ("ov", 0, 0),
        ("ov", 1, 2),
        ("qk", 0, 1),
        ("qk", 1, 2),
        ("mlp_in", 0, None),
        ("mlp_out", 1, None),
    ],  # fmt: skip
)
def test_assembled_rows_are_numpys_svd_with_the_canonical_sign(
    toy: tuple[ModelWeights, np.ndarray, dict[str, pa.Table]],
    kind: str,
    layer: int,
    head: int | None,
) -> None:
    w, W_Uc, tables = toy
    m = _explicit(w, kind, layer, head)
    u, s, vh = np.linalg.svd(m, full_matrices=False)
    rank = min(D_HEAD, *m.shape) if kind in ("ov", "qk") else min(m.shape)
    rows = _rows(tables["directions"], kind=kind, layer=layer, head=head)
    assert len(rows) == rank * len(SIDES_OF[kind])
    by = {(r["sv_index"], r["side"]): r for r in rows}
    sigma = [by[(i, SIDES_OF[kind][0])]["sigma"] for i in range(rank)]
    np.testing.assert_allclose(sigma, s[:rank], rtol=1e-5)  # descending, as numpy orders them
    for i in range(rank):
        expected = {"read": u[:, i], "write": vh[i], "query": u[:, i], "key": vh[i]}
        judged = np.array(by[(i, JUDGED_SIDE[kind])]["vector"], dtype=np.float64)
        # the canonical sign: the judged vector's largest-magnitude centered score is positive
        scores = judged @ W_Uc
        assert scores[np.abs(scores).argmax()] > 0, (kind, i)
        sign = np.sign(judged @ expected[JUDGED_SIDE[kind]])
        for side in SIDES_OF[kind]:  # each side is its own singular vector, flipped together
            stored = np.array(by[(i, side)]["vector"], dtype=np.float64)
            np.testing.assert_allclose(stored, sign * expected[side], atol=2e-4)
        if kind in ("ov", "qk"):  # u_i^T M = sigma_i v_i^T with the stored pair
            read = np.array(by[(i, SIDES_OF[kind][0])]["vector"], dtype=np.float64)
            write = np.array(by[(i, SIDES_OF[kind][1])]["vector"], dtype=np.float64)
            np.testing.assert_allclose(read @ m, s[i] * write, atol=1e-4 * s[0])


def test_top_tokens_are_the_stored_vectors_projected_through_the_centered_unembedding(
    toy: tuple[ModelWeights, np.ndarray, dict[str, pa.Table]],
) -> None:
    _, W_Uc, tables = toy
    tokens: dict[tuple[int, str], list[tuple[int, int, float]]] = {}
    for r in tables["top"].to_pylist():
        tokens.setdefault((r["direction_id"], r["polarity"]), []).append(
            (r["rank"], r["token_id"], r["score"])
        )
    directions = tables["directions"].to_pylist()
    assert {(d["direction_id"], p) for d in directions for p in ("pos", "neg")} == set(tokens)
    for d in directions:
        scores = np.array(d["vector"], dtype=np.float64) @ W_Uc
        order = np.argsort(-scores)
        for polarity, expected in (("pos", order[:TOP_K]), ("neg", order[::-1][:TOP_K])):
            got = sorted(tokens[(d["direction_id"], polarity)])
            assert [t for _, t, _ in got] == list(expected), (d["direction_id"], polarity)
            np.testing.assert_allclose([v for *_, v in got], scores[expected], rtol=1e-4,
                                       atol=1e-5)  # fmt: skip


def test_ids_follow_the_bases_in_storage_order(
    toy: tuple[ModelWeights, np.ndarray, dict[str, pa.Table]],
) -> None:
    _, _, tables = toy
    ids = tables["directions"]["direction_id"].to_pylist()
    assert ids == list(range(1000, 1000 + len(ids)))
    matrices = tables["matrices"].to_pylist()
    assert [m["matrix_id"] for m in matrices] == list(range(100, 100 + len(matrices)))
    heads = N_LAYERS * N_HEADS
    assert [m["kind"] for m in matrices] == (
        ["ov"] * heads + ["mlp_in"] * N_LAYERS + ["mlp_out"] * N_LAYERS + ["qk"] * heads
    )
