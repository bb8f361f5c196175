"""The readout of read sides through the embedding (``top_tokens.basis = 'embed'``) against
numpy on the raw checkpoint tensors, and what every other reader of ``top_tokens`` keeps to.

Oracles: ``random:llama-tiny``'s raw ``embed_tokens`` tensor (``RandomTensors``, untied), and a
tied model, whose two readouts must then be equal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import atlas
from atlas.cli.query import SAME_READOUT
from atlas.core.contract import EMBED_SIDES
from atlas.models.random_models import RandomTensors
from atlas.server.app import create_app
from tests.support.helpers import run_cli

K = 20  # the default top_k


def _stored(a: atlas.Atlas, model_id: str, basis: str) -> dict[int, dict[str, list[float]]]:
    rows = a.sql(
        "SELECT t.direction_id, t.polarity, list(t.token_id ORDER BY t.rank) AS ids, "
        "list(t.score ORDER BY t.rank) AS scores FROM top_tokens t "
        "JOIN directions d USING (direction_id) WHERE d.model_id = ? AND t.basis = ? "
        "GROUP BY ALL",
        [model_id, basis],
    ).to_pylist()
    out: dict[int, dict[str, list[float]]] = {}
    for r in rows:
        out.setdefault(r["direction_id"], {})[r["polarity"]] = r["ids"]
        out[r["direction_id"]][r["polarity"] + "_scores"] = r["scores"]
    return out


def test_read_sides_through_the_embedding_equal_numpy(small_atlas: Path) -> None:
    """Every read, query and key direction of an untied model: its stored top and bottom tokens
    through W_E are numpy's top and bottom k of ``W_E @ v`` (scores centered over the
    vocabulary), and they differ from its tokens through W_U."""
    W_E = RandomTensors("llama-tiny").get("model.embed_tokens.weight").double().numpy()
    with atlas.open(small_atlas) as a:
        directions = a.sql(
            "SELECT direction_id, side, vector FROM directions WHERE model_id = 'llama-tiny'"
        ).to_pylist()
        embed, unembed = _stored(a, "llama-tiny", "embed"), _stored(a, "llama-tiny", "unembed")
    reads = [d for d in directions if d["side"] in EMBED_SIDES]
    assert {d["side"] for d in reads} == set(EMBED_SIDES)
    assert set(embed) == {d["direction_id"] for d in reads}  # read sides only
    assert set(unembed) == {d["direction_id"] for d in directions}  # every direction
    sample = [reads[i] for i in np.random.default_rng(0).choice(len(reads), 150, replace=False)]
    vectors = np.array([d["vector"] for d in sample], np.float64)
    scores = vectors @ (W_E - W_E.mean(axis=0)).T  # [directions, d_vocab]
    ranked = -np.sort(-scores, axis=1)
    for row, d in enumerate(sample):  # the stored tokens' own scores, and the k best (worst)
        got = embed[d["direction_id"]]
        np.testing.assert_allclose(scores[row, got["pos"]], got["pos_scores"], atol=1e-5)
        np.testing.assert_allclose(scores[row, got["neg"]], got["neg_scores"], atol=1e-5)
        np.testing.assert_allclose(got["pos_scores"], ranked[row, :K], atol=1e-5)
        np.testing.assert_allclose(got["neg_scores"], ranked[row, ::-1][:K], atol=1e-5)
    differ = sum(
        embed[d["direction_id"]]["pos"] != unembed[d["direction_id"]]["pos"] for d in reads
    )
    assert differ == len(reads)  # untied: W_E and W_U are unrelated random matrices


def test_a_tied_models_two_readouts_are_equal(tmp_path: Path) -> None:
    """random:gpt2-tiny ties W_U to W_Eᵀ: the embed rows equal the unembed rows of every read
    side (tokens and scores), and write sides have no embed rows."""
    root = tmp_path / "atlas"
    ingested = run_cli("--atlas", root, "ingest", "random:gpt2-tiny", "--max-rank", "4")
    assert ingested.returncode == 0, ingested.stderr
    with atlas.open(root) as a:
        sides = {r["direction_id"]: r["side"] for r in
                 a.sql("SELECT direction_id, side FROM directions").to_pylist()}  # fmt: skip
        embed = _stored(a, "random:gpt2-tiny", "embed")
        unembed = _stored(a, "random:gpt2-tiny", "unembed")
    assert set(embed) == {i for i, side in sides.items() if side in EMBED_SIDES}
    for i, got in embed.items():
        assert got["pos"] == unembed[i]["pos"] and got["neg"] == unembed[i]["neg"]
        np.testing.assert_allclose(got["pos_scores"], unembed[i]["pos_scores"], atol=1e-6)
    # the cards say so once instead of listing the same tokens twice
    read = min(embed)
    card = run_cli("--atlas", root, "show", str(read)).stdout
    head = run_cli("--atlas", root, "show", "random:gpt2-tiny", "0", "0", "--top", "2").stdout
    for shown in (card, head):
        assert f"reads (W_E): {SAME_READOUT}" in shown and "reads (W_E) +" not in shown
    with TestClient(create_app(str(root))) as client:
        assert client.get(f"/api/directions/{read}").json()["embed_same_as_unembed"] is True
        page = client.get(f"/directions/{read}").text
        assert "the same tokens as above" in page and "Reads (W_E), positive" not in page


@pytest.mark.parametrize("side", ["read", "write"])
def test_cards_show_the_embedding_readout_of_read_sides(small_atlas: Path, side: str) -> None:
    with atlas.open(small_atlas) as a:
        (row,) = a.sql(
            "SELECT min(direction_id) AS d FROM directions WHERE model_id = 'llama-tiny' "
            "AND kind = 'ov' AND side = ?",
            [side],
        ).to_pylist()
        card = a.card(row["d"])
        stored = _stored(a, "llama-tiny", "embed").get(row["d"])
        head = a.card("llama-tiny", 0, 0, top=2)
    assert card["embed_missing"] is None and card["embed_same_as_unembed"] is False  # untied
    assert (
        all(t["polarity"] in ("pos", "neg") for t in card["tokens"])
        and len(card["tokens"]) == 2 * K
    )
    if side == "write":
        assert card["embed_tokens"] is None and stored is None
    else:
        assert stored is not None
        assert [t["token_display"] for t in card["embed_tokens"]][:1]
        ids = [t for t in card["embed_tokens"] if t["polarity"] == "pos"]
        assert len(ids) == K
    assert (
        head["directions"][0]["read_embed_pos"] and "write_embed_pos" not in head["directions"][0]
    )
    shown = run_cli("--atlas", small_atlas, "show", str(row["d"]))
    assert shown.returncode == 0, shown.stderr
    assert ("reads (W_E):" in shown.stdout) == (side == "read")
    assert SAME_READOUT not in shown.stdout  # untied: its own tokens, listed
    if side == "read":
        first = next(t for t in card["embed_tokens"] if t["polarity"] == "pos")
        assert first["token_display"] in shown.stdout.partition("reads (W_E):")[2]
    with TestClient(create_app(str(small_atlas))) as client:
        answer = client.get(f"/api/directions/{row['d']}").json()
        assert answer["embed_tokens"] == card["embed_tokens"]
        page = client.get(f"/directions/{row['d']}").text
        assert ("Reads (W_E), positive" in page) == (side == "read")


def test_token_space_search_and_views_keep_to_the_unembedding(small_atlas: Path) -> None:
    """direction_tokens and token_bags are built from W_U's tokens alone: a direction's bag is
    exactly its unembed tokens', and the view lists 20 + 20 tokens per direction."""
    with atlas.open(small_atlas) as a:
        counts = a.sql(
            "SELECT min(len(pos_tokens)) AS lo, max(len(pos_tokens) + len(neg_tokens)) AS hi "
            "FROM direction_tokens WHERE model_id = 'llama-tiny'"
        ).to_pylist()[0]
        assert (counts["lo"], counts["hi"]) == (K, 2 * K)
        (one,) = a.sql(
            "SELECT min(direction_id) AS d FROM directions WHERE model_id = 'llama-tiny' "
            "AND side = 'read'"
        ).to_pylist()
        bag = a.sql("SELECT token_norm FROM token_bags WHERE direction_id = ?", [one["d"]])
        words = a.sql(
            "SELECT DISTINCT v.token_norm FROM top_tokens t JOIN vocab v USING (token_id) "
            "WHERE t.direction_id = ? AND t.basis = 'unembed' AND v.model_id = 'llama-tiny' "
            "AND v.token_norm <> ''",
            [one["d"]],
        )
    assert sorted(bag["token_norm"].to_pylist()) == sorted(words["token_norm"].to_pylist())
