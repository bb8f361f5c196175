"""Weights at the edges. Those whose SVD means nothing are refused in one line, before
anything is published: an infinite value (its SVD was stored as garbage: sigma inf and NaN,
basis vectors for directions) or a NaN (LAPACK failed with a traceback). A zero head (pruned)
is a model like any other: it composes with nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import atlas
from atlas.errors import AtlasWarning
from atlas.models.random_models import save_random_model
from tests.support.helpers import assert_one_error_line, run_cli

# random:gpt2-tiny: width 64, 4 heads of 16, 3 layers, an MLP of 256
DAMAGE = {
    "inf": ("transformer.h.2.mlp.c_fc.weight", float("inf"), "layer 2's W_in"),
    "nan": ("transformer.h.1.attn.c_attn.weight", float("nan"), "layer 1's W_Q"),
    "inf unembedding": ("transformer.wte.weight", float("-inf"), "the model's W_U"),
}


@pytest.mark.slow  # saves and ingests a model: about 3 s each
@pytest.mark.parametrize("case", list(DAMAGE))
def test_non_finite_weights_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    name, value, words = DAMAGE[case]
    folder = save_random_model("gpt2-tiny", tmp_path / "model")
    tensors = load_file(folder / "model.safetensors")
    tensors[name][0, 0] = value  # W_U is tied to the embedding: one token's row, all of it
    if case == "inf unembedding":
        tensors[name][0, :] = value
    save_file(tensors, folder / "model.safetensors")
    root = tmp_path / "atlas"
    line = assert_one_error_line(run_cli("--atlas", root, "ingest", folder))
    assert f"{words} holds non-finite values (inf or NaN)" in line, line
    assert "not ingested" in line
    if root.exists():  # the atlas the ingest created holds nothing
        assert "holds no models yet" in run_cli("--atlas", root, "models").stdout


@pytest.mark.slow  # an ingest: about 5 s
def test_a_zero_head_composes_with_nothing(tmp_path: Path) -> None:
    """Head 1 of layer 0 with W_V = 0: its OV circuit is zero, so its composition scores are
    0 (TransformerLens's ratio is 0/0; stored as NaN, it sorted above every real score)."""
    folder = save_random_model("gpt2-tiny", tmp_path / "model")
    tensors = load_file(folder / "model.safetensors")
    d_model, d_head = 64, 16  # c_attn holds Q, K and V side by side, d_model columns each
    tensors["transformer.h.0.attn.c_attn.weight"][
        :, 2 * d_model + d_head : 2 * d_model + 2 * d_head
    ] = 0
    save_file(tensors, folder / "model.safetensors")
    root = tmp_path / "atlas"
    assert run_cli("--atlas", root, "ingest", folder).returncode == 0
    with atlas.open(root) as a:
        rows = a.sql(
            "SELECT src_layer, src_head, score, relative, top_pairs_share, contribution "
            "FROM composition JOIN composition_pairs "
            "USING (src_layer, src_head, dst_layer, dst_head, mode)"
        ).to_pylist()
        top = a.composition("model", top=1)["edges"]
        (write,) = (
            a.sql(
                "SELECT direction_id FROM directions WHERE kind = 'ov' AND side = 'write' "
                "AND layer = 0 AND head = 1 AND sv_index = 0"
            )
            .column(0)
            .to_pylist()
        )
        with pytest.warns(AtlasWarning, match="no stored pair"):
            alone = a.trace(write, via="composition", min_share=0.0)  # its shares are 0/0
    assert [r["direction_id"] for r in alone] == [write]
    assert rows and all(all(v == v for v in r.values()) for r in rows), (
        "a NaN in the composition tables"
    )
    zero = [r for r in rows if (r["src_layer"], r["src_head"]) == (0, 1)]
    assert zero and all(r["score"] == r["relative"] == r["contribution"] == 0 for r in zero)
    assert all(e["score"] > 0 for e in top)
    with atlas.open(root) as a:  # its card and page list no edge out of it: there is none
        assert a.card("model", 0, 1)["composition"]["out"] == []
        assert a.composition("model", layer=0, head=1)["out"] == []


@pytest.mark.slow  # two ingests: about 10 s
def test_a_numerically_zero_singular_value_is_flagged_and_left_out_of_ratios(
    tmp_path: Path,
) -> None:
    """TransformerLens's processing folds LayerNorm into W_in, whose rows then sum to zero:
    rank 63 of 64, its last singular value rounding noise. That direction is flagged degenerate
    (its vector is set by rounding), and compare's relative sigma change leaves it out (it
    divided noise by noise: 4e4 for matrices whose real change was 0.04)."""
    root = tmp_path / "atlas"
    for processing in ("raw", "tl"):
        atlas.ingest(root, "random:gpt2-tiny", name=processing, processing=processing,
                     device="cpu", progress=False)  # fmt: skip
    with atlas.open(root) as a:
        rows = a.sql(
            "SELECT d.sigma, d.degenerate, d.degenerate_group, m.sigma_max FROM directions d "
            "JOIN matrices m USING (matrix_id) WHERE d.model_id = 'tl' AND d.kind = 'mlp_in' "
            "AND d.side = 'read' AND d.sv_index = 63"
        ).to_pylist()
        compared = {
            r["kind"]: r["sigma_change"]
            for r in a.compare("tl", "raw")
            if r["scope"] == "aggregate"
        }
    assert len(rows) == 3
    for r in rows:
        assert r["sigma"] < 1e-5 * r["sigma_max"]  # zero to float32 precision
        assert r["degenerate"] and r["degenerate_group"] == 63
    assert 0 < compared["mlp_in"] < 1 and 0 < compared["all"] < 1, compared


@pytest.mark.slow  # an ingest: about 5 s
def test_a_pair_through_a_degenerate_head_is_marked(tmp_path: Path) -> None:
    """Layer 1 head 2's OV circuit is 0.1 times a projection: its 16 singular values are
    equal, so its directions are one basis of their span among many, and a composition pair
    through one of them carries one basis choice's share: marked, in the library's rows, the
    command line's `~` and the page."""
    import torch
    from fastapi.testclient import TestClient

    from atlas.server.app import create_app

    folder = save_random_model("gpt2-tiny", tmp_path / "model")
    tensors = load_file(folder / "model.safetensors")
    d_model, d_head, head = 64, 16, 2
    columns = slice(2 * d_model + head * d_head, 2 * d_model + (head + 1) * d_head)
    w_v = tensors["transformer.h.1.attn.c_attn.weight"]
    w_v[:, columns] = 0
    w_v[:d_head, columns] = 0.1 * torch.eye(d_head)
    w_o = tensors["transformer.h.1.attn.c_proj.weight"]
    rows = slice(head * d_head, (head + 1) * d_head)
    w_o[rows, :] = 0
    w_o[rows, :d_head] = torch.eye(d_head)
    save_file(tensors, folder / "model.safetensors")
    root = tmp_path / "atlas"
    assert run_cli("--atlas", root, "ingest", folder).returncode == 0
    with atlas.open(root) as a:
        edges = a.composition("model", layer=1, head=2, mode="V")["out"]
    pairs = [p for e in edges for p in e["pairs"]]
    assert pairs and all(p["src_degenerate"] for p in pairs)
    assert all(p["dst_degenerate"] is not None for p in pairs)
    text = run_cli("--atlas", root, "circuits", "model", "1", "2", "--mode", "V", "--pairs")
    shown = [line.split() for line in text.stdout.splitlines() if line[:1].isdigit()]
    # fed by: its V read directions (dst_sv) are the degenerate ones; feeds: its write ones
    assert shown and all(row[3].endswith("~") or row[4].endswith("~") for row in shown), text
    assert any(row[3].endswith("~") for row in shown), text.stdout
    with TestClient(create_app(str(root))) as client:
        page = client.get("/circuits/head", params={"model": "model", "layer": 1, "head": 2})
    assert page.status_code == 200 and page.text.count('class="degenerate"') >= len(pairs)
