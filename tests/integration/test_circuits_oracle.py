"""QK circuits, eigenvalue positivity and head composition against TransformerLens and numpy.

Two local folders (``tests/support/circuits.py``): GPT-2 (``random:gpt2-tiny``'s shape) and
Llama (``random:llama-tiny``: grouped-query attention, 8 query heads over 2 key-value heads,
rotary positions), each with one composition planted. Each is ingested from its folder; the
peer oracle is TransformerLens booting the same folder (``all_composition_scores``,
``FactoredMatrix(W_Q, W_Kᵀ).svd()`` and ``.eigenvalues``), with the same weight processing, and
numpy on the folder's raw safetensors is the second oracle.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pytest
import torch

import atlas
from atlas.core.errors import AtlasError, AtlasWarning
from tests.support.circuits import PLANTS, composition_scores, planted_folder, raw_heads
from tests.support.helpers import assert_one_error_line, run_cli

# (model id in the atlas, shape, processing)
INGESTS = [("gpt2-raw", "gpt2-tiny", "raw"), ("gpt2-tl", "gpt2-tiny", "tl"),
           ("llama-raw", "llama-tiny", "raw")]  # fmt: skip
TOL = 1e-5


@pytest.fixture(scope="module")
def circuits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("circuits")
    folders = {s: planted_folder(s, base / s) for s in ("gpt2-tiny", "llama-tiny")}
    root = base / "atlas"
    for model_id, shape, processing in INGESTS:
        # the top directions are enough to check the readouts: circuits use whole matrices
        atlas.ingest(root, str(folders[shape]), name=model_id, processing=processing,
                     max_rank=8, device="cpu", progress=False)  # fmt: skip
    return {"root": root, "folders": folders}


@pytest.fixture(scope="module")
def bridges(circuits: dict[str, Any]) -> dict[str, Any]:
    from atlas.models.loading import load_model

    return {
        model_id: load_model(str(circuits["folders"][shape]), processing=processing).bridge
        for model_id, shape, processing in INGESTS
    }


def stored_scores(a: atlas.Atlas, model_id: str, mode: str, shape: tuple[int, ...]) -> np.ndarray:
    rows = a.sql(
        "SELECT src_layer, src_head, dst_layer, dst_head, score FROM composition "
        "WHERE model_id = ? AND mode = ?",
        [model_id, mode],
    ).to_pandas()
    out = np.zeros(shape)
    out[rows.src_layer, rows.src_head, rows.dst_layer, rows.dst_head] = rows.score
    return out


@pytest.mark.parametrize("model_id", [m for m, _, _ in INGESTS])
def test_composition_equals_all_composition_scores(
    circuits: dict[str, Any], bridges: dict[str, Any], model_id: str
) -> None:
    a = atlas.open(circuits["root"])
    for mode in "QKV":
        expected = bridges[model_id].all_composition_scores(mode).scores.detach().double().numpy()
        got = stored_scores(a, model_id, mode, expected.shape)
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    n_layers, n_heads = expected.shape[:2]
    count = a.sql(
        "SELECT count(*) AS n FROM composition WHERE model_id = ? AND src_layer < dst_layer",
        [model_id],
    )["n"][0].as_py()
    assert count == 3 * n_heads**2 * n_layers * (n_layers - 1) // 2  # every ordered pair


@pytest.mark.parametrize("model_id", ["gpt2-raw", "llama-raw"])
def test_composition_equals_numpy_on_raw_weights(circuits: dict[str, Any], model_id: str) -> None:
    shape = dict((m, s) for m, s, _ in INGESTS)[model_id]
    heads = raw_heads(circuits["folders"][shape], shape)
    a = atlas.open(circuits["root"])
    for mode in "QKV":
        expected = composition_scores(heads, mode)
        np.testing.assert_allclose(
            stored_scores(a, model_id, mode, expected.shape), expected, atol=TOL, rtol=0
        )


@pytest.mark.parametrize("model_id", [m for m, _, _ in INGESTS])
def test_qk_spectra_and_eigenvalue_positivity_equal_factored_matrix(
    circuits: dict[str, Any], bridges: dict[str, Any], model_id: str
) -> None:
    b = bridges[model_id]
    a = atlas.open(circuits["root"])
    _, S, _ = b.QK.svd()
    for kind, circuit in (("qk", b.QK), ("ov", b.OV)):
        rows = a.sql(
            "SELECT spectrum, eigen_positivity FROM matrices WHERE model_id = ? AND kind = ? "
            "ORDER BY layer, head",
            [model_id, kind],
        ).to_pandas()
        eig = circuit.eigenvalues.detach().to(torch.complex128)
        positivity = (eig.sum(-1).real / eig.abs().sum(-1)).reshape(-1).numpy()
        np.testing.assert_allclose(rows.eigen_positivity, positivity, atol=TOL)
        if kind == "qk":
            spectra = np.stack(rows.spectrum.to_list())
            np.testing.assert_allclose(spectra, S.detach().reshape(spectra.shape), atol=TOL)


def test_qk_directions_are_numpy_singular_vectors(circuits: dict[str, Any]) -> None:
    """Llama, raw: query head 5 of layer 2 shares key head 1 (grouped-query pairing); the
    stored query and key vectors are U's and V's columns of numpy's SVD of W_Q W_Kᵀ."""
    heads = raw_heads(circuits["folders"]["llama-tiny"], "llama-tiny")
    a = atlas.open(circuits["root"])
    for layer, head in ((1, 0), (2, 5), (3, 7)):
        U, S, Vt = np.linalg.svd(heads.W_Q[layer, head] @ heads.W_K[layer, head].T)
        rows = a.sql(
            "SELECT sv_index, side, sigma, vector FROM directions WHERE model_id = 'llama-raw' "
            "AND kind = 'qk' AND layer = ? AND head = ? AND sv_index < 4 ORDER BY sv_index, side",
            [layer, head],
        ).to_pylist()
        for r in rows:
            expected = U[:, r["sv_index"]] if r["side"] == "query" else Vt[r["sv_index"]]
            assert abs(np.dot(r["vector"], expected)) > 1 - 1e-5
            assert r["sigma"] == pytest.approx(S[r["sv_index"]], rel=1e-5)
        # a query vector and its key partner carry one sign: u S vᵀ is the matrix
        q = {r["sv_index"]: np.array(r["vector"]) for r in rows if r["side"] == "query"}
        k = {r["sv_index"]: np.array(r["vector"]) for r in rows if r["side"] == "key"}
        product = heads.W_Q[layer, head] @ heads.W_K[layer, head].T
        for i in q:
            assert q[i] @ product @ k[i] == pytest.approx(S[i], rel=1e-4)


def test_models_record_rotary_positions(circuits: dict[str, Any]) -> None:
    a = atlas.open(circuits["root"])
    rows = {
        r["model_id"]: r["positional_embedding"]
        for r in a.sql("SELECT model_id, positional_embedding FROM models").to_pylist()
    }
    assert rows == {"gpt2-raw": "standard", "gpt2-tl": "standard", "llama-raw": "rotary"}


@pytest.mark.parametrize("model_id", ["gpt2-raw", "gpt2-tl", "llama-raw"])
def test_planted_composition_ranks_first(circuits: dict[str, Any], model_id: str) -> None:
    plant = PLANTS[dict((m, s) for m, s, _ in INGESTS)[model_id]]
    a = atlas.open(circuits["root"])
    top = a.composition(model_id, mode=plant.mode, top=2)["edges"]
    first = top[0]
    assert (first["src_layer"], first["src_head"]) == plant.src
    assert (first["dst_layer"], first["dst_head"]) == plant.dst
    assert first["relative"] > 5 * top[1]["relative"]  # far above the random pairs
    if model_id.endswith("raw"):  # rank 1 into rank 1, aligned: the largest score there is
        assert first["score"] == pytest.approx(1.0, abs=1e-4)
        assert first["top_pairs_share"] == pytest.approx(1.0, abs=1e-4)


def test_pairs_split_the_score_exactly(circuits: dict[str, Any]) -> None:
    """Each stored pair's contribution is numpy's (σ_i τ_j (v_i · u'_j))² / (||L||² ||R||²),
    the largest first; over all pairs they sum to score² (numpy), so the kept ones sum to
    ``top_pairs_share`` of it."""
    heads = raw_heads(circuits["folders"]["gpt2-tiny"], "gpt2-tiny")
    a = atlas.open(circuits["root"])
    for sl, sh, dl, dh, mode in ((0, 0, 1, 2, "V"), (0, 3, 2, 1, "Q"), (1, 1, 2, 0, "K")):
        left = heads.W_V[sl, sh] @ heads.W_O[sl, sh]
        qk = heads.W_Q[dl, dh] @ heads.W_K[dl, dh].T
        right = {"Q": qk, "K": qk.T, "V": heads.W_V[dl, dh] @ heads.W_O[dl, dh]}[mode]
        _, s, vt = np.linalg.svd(left)
        u2, t, _ = np.linalg.svd(right)
        terms = (s[:, None] * t[None, :] * (vt @ u2)) ** 2
        terms /= (s**2).sum() * (t**2).sum()
        score = np.linalg.norm(left @ right) / (np.linalg.norm(left) * np.linalg.norm(right))
        assert terms.sum() == pytest.approx(score**2, rel=1e-6)
        stored = a.sql(
            "SELECT p.contribution, c.score, c.top_pairs_share FROM composition_pairs p "
            "JOIN composition c USING (model_id, src_layer, src_head, dst_layer, dst_head, mode) "
            "WHERE model_id = 'gpt2-raw' AND src_layer = ? AND src_head = ? AND dst_layer = ? "
            "AND dst_head = ? AND mode = ? ORDER BY p.rank",
            [sl, sh, dl, dh, mode],
        ).to_pandas()
        expected = np.sort(terms.ravel())[::-1][: len(stored)]
        np.testing.assert_allclose(stored.contribution, expected, rtol=1e-4, atol=1e-9)
        share = stored.contribution.sum() / stored.score[0] ** 2
        assert share == pytest.approx(stored.top_pairs_share[0], rel=1e-5)


def test_head_composition_view_and_head_summary(circuits: dict[str, Any]) -> None:
    plant = PLANTS["gpt2-tiny"]
    a = atlas.open(circuits["root"])
    (fed_by,) = a.sql(
        "SELECT fed_by[1] AS e FROM head_composition WHERE model_id = 'gpt2-raw' AND layer = ? "
        "AND head = ? AND mode = ?",
        [*plant.dst, plant.mode],
    )["e"].to_pylist()
    assert (fed_by["layer"], fed_by["head"]) == plant.src
    (feeds,) = a.sql(
        "SELECT feeds[1] AS e FROM head_composition WHERE model_id = 'gpt2-raw' AND layer = ? "
        "AND head = ? AND mode = ?",
        [*plant.src, plant.mode],
    )["e"].to_pylist()
    assert (feeds["layer"], feeds["head"]) == plant.dst
    rows = a.sql(
        "SELECT ov_positivity, qk_positivity FROM head_summary WHERE model_id = 'llama-raw'"
    ).to_pandas()
    assert len(rows) == 32 and rows.notna().all().all()


def test_trace_via_composition_reaches_the_planted_reader(circuits: dict[str, Any]) -> None:
    plant = PLANTS["gpt2-tiny"]
    a = atlas.open(circuits["root"])
    (origin,) = a.sql(
        "SELECT direction_id FROM directions WHERE model_id = 'gpt2-raw' AND kind = 'ov' "
        "AND side = 'write' AND layer = ? AND head = ? AND sv_index = 0",
        list(plant.src),
    )["direction_id"].to_pylist()
    steps = a.trace(origin, via="composition", hops=2)
    first = steps[1]
    assert (first["layer"], first["head"], first["kind"], first["side"], first["mode"]) == (
        *plant.dst, "qk", "key", "K")  # fmt: skip
    assert first["share"] == pytest.approx(1.0, abs=1e-4) and first["parent"] == origin
    # from a read direction it is refused, naming the write direction to start from
    (read,) = a.sql(
        "SELECT r.direction_id FROM directions r JOIN directions w USING (matrix_id, sv_index) "
        "WHERE w.direction_id = ? AND r.side = 'read'",
        [origin],
    )["direction_id"].to_pylist()
    with pytest.raises(
        AtlasError, match=f"an ov read direction; .*write partner is direction {origin}$"
    ):
        a.trace(read, via="composition")
    (query,) = a.sql(
        "SELECT direction_id FROM directions WHERE model_id = 'gpt2-raw' AND side = 'query' LIMIT 1"
    )["direction_id"].to_pylist()
    with pytest.raises(AtlasError, match=r"is a qk query direction; .*\(kind ov, side write\)$"):
        a.trace(query, via="composition")


def test_a_composition_trace_says_what_its_limit_cut_and_refuses_what_it_ignores(
    circuits: dict[str, Any],
) -> None:
    """The limit keeps the strongest rows and a note counts the rest; each row carries its
    tokens (the card's, through W_U); an option the walk would ignore is one error line."""
    root = circuits["root"]
    a = atlas.open(root)
    (origin,) = a.sql(
        "SELECT direction_id FROM directions WHERE model_id = 'gpt2-raw' AND kind = 'ov' "
        "AND side = 'write' AND layer = 0 AND sv_index = 0 ORDER BY head LIMIT 1"
    )["direction_id"].to_pylist()
    full = a.trace(origin, via="composition", hops=1, min_share=0.0)
    assert len(full) >= 3 and full.notes == []
    with pytest.warns(AtlasWarning, match="cut at the limit of 2 directions"):
        cut = a.trace(origin, via="composition", hops=1, min_share=0.0, limit=2)
    assert list(cut) == full[:2]
    with pytest.warns(AtlasWarning, match="no stored pair from direction"):
        alone = a.trace(origin, via="composition", hops=2, min_share=1.0)  # no pair has it all
    assert [r["direction_id"] for r in alone] == [origin]
    assert alone.notes == [
        f"no stored pair from direction {origin} carries min_share 1 of an edge's score² (each "
        "edge keeps its largest pairs: `circuits` with `pairs` lists them)"
    ]
    assert cut.notes == [
        f"cut at the limit of 2 directions (the origin included): {len(full) - 2} more at "
        "hop 1 pass min_share 0, and any beyond them were not followed"
    ]
    for row in full:
        pos = [t["token_display"] for t in a.card(row["direction_id"])["tokens"]
               if t["polarity"] == "pos"]  # fmt: skip
        assert row["tokens"] and row["tokens"] == pos[: len(row["tokens"])]
    text = run_cli("--atlas", root, "trace", str(origin), "--via", "composition",
                   "--min-share", "0", "--tokens", "2").stdout.splitlines()  # fmt: skip
    assert text[0].split()[:2] == ["direction_id", "hop"]
    assert ", ".join(full[1]["tokens"][:2]) in text[2]
    for args, name in ((["--via", "composition", "--min-cos", "0.5"], "min_cos"),
                       (["--via", "composition", "--layer", "1"], "layer"),
                       (["--same-model", "--via", "composition"], "same_model"),
                       (["--min-share", "0.2"], "min_share")):  # fmt: skip
        line = assert_one_error_line(run_cli("--atlas", root, "trace", str(origin), *args))
        assert "does not apply to a trace via" in line and name.replace("_", "-") in line, line


def test_cli_and_http_reach_the_planted_pair(circuits: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient

    from atlas.server.app import create_app

    plant, root = PLANTS["llama-tiny"], circuits["root"]
    result = run_cli("--atlas", root, "circuits", "llama-raw", "--mode", plant.mode,
                     "--top", "1", "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (edge,) = json.loads(result.stdout)["edges"]
    assert (edge["src_layer"], edge["src_head"], edge["dst_layer"], edge["dst_head"]) == (
        *plant.src, *plant.dst)  # fmt: skip
    head = run_cli("--atlas", root, "circuits", "llama-raw", *map(str, plant.dst), "--pairs")
    assert head.returncode == 0 and "fed by" in head.stdout and "Traceback" not in head.stderr
    # as CSV, one table: a row per pair of each in- and out-edge, as the JSON holds them
    place = ["--atlas", root, "circuits", "llama-raw", *map(str, plant.dst), "--top", "2"]
    edges = json.loads(run_cli(*place, "--format", "json").stdout)
    rows = list(csv.DictReader(io.StringIO(run_cli(*place, "--pairs", "--format", "csv").stdout)))
    ends = ("src_direction_id", "dst_direction_id")
    expected = [
        (end, e["mode"], *("" if p.get(c) is None else str(p[c]) for c in ends))
        for end in ("in", "out")
        for e in edges[end]
        for p in e["pairs"] or [{}]
    ]
    assert [(r["end"], r["mode"], *(r[c] for c in ends)) for r in rows] == expected
    assert {r["end"] for r in rows} == {"in", "out"}
    for e in edges["in"] + edges["out"]:  # a pair's share of its edge, in every interface
        for p in e["pairs"]:
            assert p["share"] == pytest.approx(p["contribution"] / e["score"] ** 2)
    for half in (("2",), ("--pairs",)):  # half a place, or pairs of no head: refused
        bad = run_cli("--atlas", root, "circuits", "llama-raw", *half)
        assert bad.returncode != 0 and bad.stderr.count("\n") == 1, bad.stderr
        assert "LAYER and HEAD" in bad.stderr and "Traceback" not in bad.stderr
    # LAYER and HEAD are arguments: a missing head names them, never a --head flag
    for where, said in ((("2", "99"), "HEAD: 'llama-raw' has no head 99 in layer 2"),
                        (("99", "0"), "LAYER: 'llama-raw' has no layer 99")):  # fmt: skip
        missing = run_cli("--atlas", root, "circuits", "llama-raw", *where)
        line = missing.stderr.strip()
        assert missing.returncode != 0 and line.count("\n") == 0, missing.stderr
        assert said in line and "--head" not in line and "--layer" not in line, line
    with TestClient(create_app(str(root))) as client:
        got = client.get("/api/composition", params={"model": "llama-raw", "mode": "q", "top": 1})
        assert got.status_code == 200 and got.json()["edges"] == [edge]
        head_params = {"model": "llama-raw", "layer": 2, "head": 5, "mode": "Q", "top": 1}
        mine = client.get("/api/composition", params=head_params)
        assert (mine.json()["in"][0]["src_layer"], mine.json()["in"][0]["src_head"]) == plant.src
        assert (
            client.get("/api/composition", params={"model": "llama-raw", "head": 1}).json()[
                "status"
            ]
            == 400
        )
        assert client.get("/api/composition", params={"model": "nope"}).status_code == 404


def test_show_card_has_qk_spectrum_and_composition(circuits: dict[str, Any]) -> None:
    plant = PLANTS["llama-tiny"]
    card = atlas.open(circuits["root"]).card("llama-raw", *plant.dst, top=2)
    assert card["positional_embedding"] == "rotary"
    assert len(card["qk"]["spectrum"]) == 32 and card["qk"]["eigen_positivity"] is not None
    fed_by = [(e["src_layer"], e["src_head"]) for e in card["composition"]["in"]
              if e["mode"] == plant.mode]  # fmt: skip
    assert fed_by[0] == plant.src
    text = run_cli("--atlas", circuits["root"], "show", "llama-raw", *map(str, plant.dst))
    assert text.returncode == 0, text.stderr
    assert "qk" in text.stdout and "rotary" in text.stdout and "fed by" in text.stdout


def test_pages_show_the_planted_edge_and_link_its_directions(circuits: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient

    from atlas.server.app import create_app

    plant, root = PLANTS["gpt2-tiny"], circuits["root"]
    (src, dst) = (f"L{plant.src[0]} H{plant.src[1]}", f"L{plant.dst[0]} H{plant.dst[1]}")
    with TestClient(create_app(str(root))) as client:
        page = client.get("/circuits", params={"model": "gpt2-raw", "mode": plant.mode,
                                               "min_relative": 2})  # fmt: skip
        assert page.status_code == 200
        rows = page.text.split("<h2>Strongest")[1].split("<tr>")[2:]  # the edges, strongest first
        assert len(rows) == 1 and src in rows[0] and dst in rows[0]
        where = {"model": "gpt2-raw", "layer": plant.dst[0], "head": plant.dst[1]}
        head = client.get("/circuits/head", params=where)
        pair = client.get("/api/composition", params={**where, "mode": plant.mode, "top": 1}).json()
        first = pair["in"][0]["pairs"][0]
        assert f'href="/directions/{first["src_direction_id"]}"' in head.text
        assert f'href="/directions/{first["dst_direction_id"]}"' in head.text
        unknown = client.get("/circuits", params={"model": "gpt2-raw", "mode": "X"})
        # the command line's words (it showed its own pattern: String should match '^[QKVqkv]$')
        assert unknown.status_code == 400
        assert "mode: unknown mode &#39;X&#39;; choose from Q, K, V" in unknown.text
        lower = client.get("/circuits", params={"model": "gpt2-raw", "mode": plant.mode.lower()})
        assert lower.status_code == 200 and lower.text.count("Strongest") == 1
        bad = client.get("/circuits/head", params={"model": "gpt2-raw", "layer": 9, "head": 0})
        assert bad.status_code == 404 and "<script" not in bad.text


def test_a_qk_direction_is_not_edited(circuits: dict[str, Any]) -> None:
    a = atlas.open(circuits["root"])
    (qk,) = a.sql(
        "SELECT min(direction_id) AS d FROM directions WHERE model_id = 'gpt2-raw' AND kind = 'qk'"
    )["d"].to_pylist()
    with pytest.raises(atlas.AtlasError, match="'qk' direction; rank-1 edits apply"):
        a.edit("gpt2-raw", {qk: -1.0}, [("the cat", "sat")], device="cpu")


def test_a_rotary_models_qk_card_says_positions_rotate_it(circuits: dict[str, Any]) -> None:
    """As its OV card's circuits line does: the QK circuit shown is the content part."""
    root = circuits["root"]
    with atlas.open(root) as a:
        assert a.card("llama-raw", 1, 0, circuit="qk")["positional_embedding"] == "rotary"
        assert a.card("gpt2-raw", 1, 0, circuit="qk")["positional_embedding"] != "rotary"
    shown = run_cli("--atlas", root, "show", "llama-raw", "1", "0", "--circuit", "qk").stdout
    assert "  rotary: the content part; positions rotate it" in shown.splitlines()
    plain = run_cli("--atlas", root, "show", "gpt2-raw", "1", "0", "--circuit", "qk").stdout
    assert "rotary" not in plain
