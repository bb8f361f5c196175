"""Rank-1 concept editing: the edited matrix's SVD against numpy, activations, restoration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import atlas
from atlas.core.errors import AtlasError, BadParameter
from query.edit import Direction, concept_edit, lookup, plan
from tests.support.helpers import assert_one_error_line, run_cli
from tests.support.tiny_models import ingest_loaded, tiny_gpt2

# slow: edits live models and measures their next-token distributions
pytestmark = pytest.mark.slow

LAYER = 1
PROMPT = "the cat sat on the"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, atlas.Atlas]]:
    """A random causal MHA model (own W_V per head) and its atlas."""
    root = tmp_path_factory.mktemp("edit") / "atlas"
    loaded = tiny_gpt2(n_layers=3, seed=1)
    with torch.no_grad():  # nonzero value biases, so that the bias path is really tested
        for block in loaded.bridge.blocks:
            block.attn.b_V.copy_(torch.randn_like(block.attn.b_V))
    ingest_loaded(root, loaded, "tiny")
    with atlas.open(root) as a:
        yield loaded.bridge, a


def direction_id(a: atlas.Atlas, kind: str, layer: int, head: int | None, sv: int) -> int:
    side = "read" if kind in ("mlp_in", "mlp_gate") else "write"
    return a.sql(
        "SELECT direction_id FROM directions WHERE kind = ? AND layer = ? AND "
        "head IS NOT DISTINCT FROM ? AND sv_index = ? AND side = ?",
        [kind, layer, head, sv, side],
    ).to_pylist()[0]["direction_id"]


def live_matrix(bridge: Any, kind: str, layer: int, head: int | None) -> np.ndarray:
    if kind == "ov":
        attn = bridge.blocks[layer].attn
        group = bridge.cfg.n_heads // attn.W_V.shape[0]
        w_v = attn.W_V[head // group].detach().double().numpy()
        return w_v @ attn.W_O[head].detach().double().numpy()
    name = {"mlp_in": "W_in", "mlp_gate": "W_gate", "mlp_out": "W_out"}[kind]
    return getattr(bridge.blocks[layer].mlp, name).detach().double().numpy()


def params(bridge: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in bridge.named_parameters()}


def assert_svd_after_edit(before: np.ndarray, after: np.ndarray, scales: dict[int, float]) -> None:
    """numpy: triple i's sigma is scaled by scales[i]; every other triple is unchanged."""
    u0, s0, vh0 = np.linalg.svd(before)
    u1, s1, vh1 = np.linalg.svd(after)
    r = int((s0 > 1e-6 * s0[0]).sum())
    expected = s0[:r].copy()
    for i, scale in scales.items():
        expected[i] *= scale
    np.testing.assert_allclose(np.sort(s1[:r])[::-1], np.sort(expected)[::-1], atol=1e-5 * s0[0])
    for i in range(r):
        if i in scales and expected[i] < 1e-6 * s0[0]:
            continue  # removed: no partner vector to compare
        j = int(np.argmin(np.abs(s1[:r] - expected[i])))
        assert abs(u0[:, i] @ u1[:, j]) > 1 - 1e-4, f"read vector {i} changed"
        assert abs(vh0[i] @ vh1[j]) > 1 - 1e-4, f"write vector {i} changed"


@pytest.mark.parametrize(
    ("kind", "head", "sv", "eps"),
    [
        ("ov", 2, 1, -1.0),
        ("ov", 0, 0, -0.5),
        ("ov", 3, 4, 2.0),
        ("mlp_in", None, 3, -1.0),
        ("mlp_out", None, 0, 0.5),
    ],
)
def test_edited_matrix_svd(
    tiny: tuple[Any, atlas.Atlas], kind: str, head: int | None, sv: int, eps: float
) -> None:
    bridge, a = tiny
    original = params(bridge)
    before = live_matrix(bridge, kind, LAYER, head)
    with concept_edit(bridge, a, {direction_id(a, kind, LAYER, head, sv): eps}) as edits:
        after = live_matrix(bridge, kind, LAYER, head)
        changed = {n for n, p in bridge.named_parameters() if not torch.equal(p, original[n])}
    assert_svd_after_edit(before, after, {sv: 1 + eps})
    if kind == "ov":
        assert edits[0].route == "W_V"
        # Only this layer's value weight changed: W_O, b_V and b_O (so b_V W_O) are untouched,
        # and so are the other heads' slices of W_V.
        assert len(changed) == 1 and ".v." in next(iter(changed)), changed
        w_v = bridge.blocks[LAYER].attn.W_V.detach()
        with concept_edit(bridge, a, {direction_id(a, kind, LAYER, head, sv): eps}):
            w_v_edited = bridge.blocks[LAYER].attn.W_V.detach().clone()
        others = [h for h in range(bridge.cfg.n_heads) if h != head]
        assert torch.equal(w_v[others], w_v_edited[others])
    else:
        assert len(changed) == 1
    for n, p in bridge.named_parameters():
        assert torch.equal(p, original[n]), f"{n} not restored bit for bit"


def test_several_directions_of_one_matrix_add_up(tiny: tuple[Any, atlas.Atlas]) -> None:
    bridge, a = tiny
    before = live_matrix(bridge, "ov", LAYER, 1)
    edits = {direction_id(a, "ov", LAYER, 1, 0): -1.0, direction_id(a, "ov", LAYER, 1, 2): 1.5}
    with concept_edit(bridge, a, edits):
        after = live_matrix(bridge, "ov", LAYER, 1)
    assert_svd_after_edit(before, after, {0: 0.0, 2: 2.5})


def run_cached(bridge: Any) -> dict[str, torch.Tensor]:
    tokens = torch.tensor([bridge.tokenizer.encode(PROMPT)])
    logits, cache = bridge.run_with_cache(tokens)
    out = {k: v.detach().clone() for k, v in cache.items()}
    out["logits"] = logits.detach().clone()
    return out


def test_ov_edit_changes_the_forward_pass_exactly_as_predicted(
    tiny: tuple[Any, atlas.Atlas],
) -> None:
    bridge, a = tiny
    head, eps = 2, -1.0
    base = run_cached(bridge)
    with concept_edit(bridge, a, {direction_id(a, "ov", LAYER, head, 0): eps}) as edits:
        edited = run_cached(bridge)
    for name in (f"blocks.{LAYER - 1}.hook_resid_post", f"blocks.{LAYER}.hook_resid_pre"):
        assert torch.equal(base[name], edited[name]), name
    for name in (f"blocks.{LAYER}.attn.hook_pattern", f"blocks.{LAYER}.ln1.hook_out"):
        assert torch.equal(base[name], edited[name]), name  # Q, K and the input are untouched
    # The head's output changes by pattern @ (x @ eps sigma u v^T), nothing else does.
    e = edits[0]
    delta_ov = (e.eps * e.sigma * torch.outer(e.u, e.v)).float()
    x = base[f"blocks.{LAYER}.ln1.hook_out"][0]
    pattern = base[f"blocks.{LAYER}.attn.hook_pattern"][0, head]
    predicted = pattern @ (x @ delta_ov)
    got = edited[f"blocks.{LAYER}.hook_attn_out"][0] - base[f"blocks.{LAYER}.hook_attn_out"][0]
    torch.testing.assert_close(got, predicted, atol=1e-5, rtol=1e-4)
    assert predicted.abs().max() > 1e-3
    assert not torch.equal(base["logits"], edited["logits"])
    after = run_cached(bridge)
    assert torch.equal(after["logits"], base["logits"])


def test_mlp_edit_changes_only_from_its_layer_on(tiny: tuple[Any, atlas.Atlas]) -> None:
    bridge, a = tiny
    base = run_cached(bridge)
    with concept_edit(bridge, a, {direction_id(a, "mlp_out", LAYER, None, 0): -1.0}) as edits:
        edited = run_cached(bridge)
    for name in (f"blocks.{LAYER}.hook_resid_mid", f"blocks.{LAYER}.mlp.hook_post"):
        assert torch.equal(base[name], edited[name]), name
    e = edits[0]
    delta = (e.eps * e.sigma * torch.outer(e.u, e.v)).float()
    predicted = base[f"blocks.{LAYER}.mlp.hook_post"][0] @ delta
    got = edited[f"blocks.{LAYER}.hook_mlp_out"][0] - base[f"blocks.{LAYER}.hook_mlp_out"][0]
    torch.testing.assert_close(got, predicted, atol=1e-5, rtol=1e-4)
    assert not torch.equal(
        base[f"blocks.{LAYER + 1}.hook_resid_post"], edited[f"blocks.{LAYER + 1}.hook_resid_post"]
    )


def test_restores_bit_for_bit_after_an_exception(tiny: tuple[Any, atlas.Atlas]) -> None:
    bridge, a = tiny
    original = params(bridge)
    edits = {direction_id(a, "ov", 0, 0, 0): -1.0, direction_id(a, "mlp_in", 2, None, 1): 3.0}
    with pytest.raises(RuntimeError, match="inside"), concept_edit(bridge, a, edits):
        raise RuntimeError("inside")
    for n, p in bridge.named_parameters():
        assert torch.equal(p, original[n]), n


def test_refuses_a_model_that_changed(tiny: tuple[Any, atlas.Atlas]) -> None:
    bridge, a = tiny
    original = bridge.blocks[0].mlp.W_in.detach().clone()
    did = direction_id(a, "mlp_in", 0, None, 0)
    try:
        with torch.no_grad():
            bridge.blocks[0].mlp.W_in.mul_(1.01)
        with pytest.raises(AtlasError, match="not the one this atlas was built from"):
            plan(bridge, lookup(a, [did]), [-1.0])
    finally:
        with torch.no_grad():
            bridge.blocks[0].mlp.W_in.copy_(original)


def test_bad_input(tiny: tuple[Any, atlas.Atlas]) -> None:
    bridge, a = tiny
    with pytest.raises(AtlasError, match="no direction 99999999"):
        lookup(a, [99999999])
    d = lookup(a, [direction_id(a, "ov", 0, 0, 0)])
    for eps in (-1.5, float("nan"), float("inf")):
        with pytest.raises(BadParameter, match="eps: must be a finite number >= -1"):
            plan(bridge, d, [eps])
    other = Direction(**{**vars(d[0]), "kind": "qk"})
    with pytest.raises(AtlasError, match="residual-space directions"):
        plan(bridge, [other], [-1.0])
    degenerate = Direction(**{**vars(d[0]), "degenerate": True})
    with pytest.raises(AtlasError, match="degenerate"):
        plan(bridge, [degenerate], [-1.0])


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """A random:llama-tiny folder with attention biases (grouped-query attention: 8 heads share
    2 W_V and 2 b_V, as in Qwen2) and its atlas, where the model is "llama". The biases make
    the constant write b_V W_O matter, which a bias-free Llama would not test."""
    from atlas.models.loading import load_model
    from atlas.models.random_models import random_config, save_random_model
    from ingest.job import IngestOptions, ingest
    from tests.support.helpers import quiet

    tmp = tmp_path_factory.mktemp("edit-llama")
    config = random_config("llama-tiny")
    config.attention_bias = True
    folder = str(save_random_model("llama-tiny", tmp / "llama-biased", config=config))
    root = tmp / "atlas"
    loaded = load_model(folder)
    ingest(root, IngestOptions(model=folder, model_id="llama", device="cpu"), loaded=loaded,
           log=quiet)  # fmt: skip
    yield loaded.bridge, root


def test_grouped_query_head_is_edited_through_its_own_w_o(llama: tuple[Any, Path]) -> None:
    bridge, root = llama
    attn = bridge.blocks[LAYER].attn
    head, kv = 5, 5 // (bridge.cfg.n_heads // attn.W_V.shape[0])
    original = params(bridge)
    try:
        with torch.no_grad():  # a large value bias, so that the constant write b_V W_O matters
            attn.b_V.copy_(torch.randn_like(attn.b_V))
        biased = params(bridge)
        constant = attn.b_V[kv].detach().double() @ attn.W_O[head].detach().double()
        constant = constant + attn.b_O.detach().double()
        before = live_matrix(bridge, "ov", LAYER, head)
        siblings = [live_matrix(bridge, "ov", LAYER, h) for h in range(bridge.cfg.n_heads)]
        with (
            atlas.open(root) as a,
            concept_edit(bridge, a, {direction_id(a, "ov", LAYER, head, 1): -1.0}) as edits,
        ):
            assert edits[0].route == "W_O+b_O"
            after = live_matrix(bridge, "ov", LAYER, head)
            for h in range(bridge.cfg.n_heads):
                if h != head:  # the shared W_V is untouched: no leak into sibling heads
                    np.testing.assert_array_equal(live_matrix(bridge, "ov", LAYER, h), siblings[h])
            changed = {n for n, p in bridge.named_parameters() if not torch.equal(p, biased[n])}
            # W_O and b_O of this layer only: W_V and b_V, shared by the group, are untouched.
            assert {n.split("._original_component.")[-2] for n in changed} == {"o_proj"}, changed
            assert all(f"layers.{LAYER}." in n for n in changed), changed
            assert {n.rsplit(".", 1)[-1] for n in changed} == {"weight", "bias"}
            now = attn.b_V[kv].detach().double() @ attn.W_O[head].detach().double()
            torch.testing.assert_close(now + attn.b_O.detach().double(), constant)
        assert_svd_after_edit(before, after, {1: 0.0})
        for n, p in bridge.named_parameters():
            assert torch.equal(p, biased[n]), n
    finally:
        with torch.no_grad():
            for n, p in bridge.named_parameters():
                p.copy_(original[n])


def next_token_probability(bridge: Any, prompt: str, target: str) -> tuple[float, int]:
    """The oracle: softmax of the last position's logits, computed here from the bridge."""
    tok = bridge.tokenizer
    with torch.no_grad():
        logits = bridge(torch.tensor([tok.encode(prompt)]))[0, -1].double()
    t = tok.get_vocab()[target]
    return float(torch.softmax(logits, -1)[t]), int((logits > logits[t]).sum())


def test_cli_end_to_end(llama: tuple[Any, Path], tmp_path: Path) -> None:
    import json

    bridge, root = llama
    with atlas.open(root) as a:
        d_ov, d_mlp = direction_id(a, "ov", 3, 5, 0), direction_id(a, "mlp_out", 3, None, 0)
        target = a.sql(  # the token the MLP direction writes most
            "SELECT token FROM top_tokens WHERE direction_id = ? AND polarity = 'pos' "
            "AND rank = 0", [d_mlp],
        ).to_pylist()[0]["token"]  # fmt: skip
        pairs = [(PROMPT, target), ("fire and", "smoke")]
        before = [next_token_probability(bridge, p, t) for p, t in pairs]
        with concept_edit(bridge, a, [(d_ov, -1.0), (d_mlp, 20.0)]):
            after = [next_token_probability(bridge, p, t) for p, t in pairs]
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text(f"# prompt<TAB>target\n{pairs[1][0]}\t{pairs[1][1]}\n\n")
    common = ["--atlas", root, "edit", "llama", "--direction", d_ov,
              "--direction", d_mlp, "--eps", "-1", "--eps", "20"]  # fmt: skip
    result = run_cli(*common, "--prompt", PROMPT, "--target", target, "--prompts", prompts,
                     "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [e["direction_id"] for e in out["edits"]] == [d_ov, d_mlp]
    assert [e["route"] for e in out["edits"]] == ["W_O+b_O", "W_out"]
    assert [(r["prompt"], r["token"]) for r in out["results"]] == pairs
    for row, (p0, r0), (p1, r1) in zip(out["results"], before, after, strict=True):
        assert row["p_before"] == pytest.approx(p0, rel=1e-5)
        assert row["p_after"] == pytest.approx(p1, rel=1e-5)
        assert (row["rank_before"], row["rank_after"]) == (r0, r1)
    # the edit really moved it: by far more than the 1e-5 the comparison above allows
    assert abs(np.log(after[0][0] / before[0][0])) > 1e-2

    table = run_cli(*common[:-4], "--eps", "-0.5", "--prompts", prompts)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["direction_id", "kind", "layer"]
    assert any(line.startswith("fire and") for line in table.stdout.splitlines())
    assert "restored bit for bit" in table.stdout
    # as CSV, one table: each probe's row names the edits it was measured under
    rows = run_cli(*common, "--prompts", prompts, "--format", "csv").stdout.splitlines()
    assert rows[0].split(",")[-1] == "edits" and len(rows) == 2
    assert rows[1].startswith("fire and,smoke,") and rows[1].endswith(f",{d_ov}:-1.0;{d_mlp}:20.0")


def test_cli_bad_input(llama: tuple[Any, Path], minilm_atlas: Path) -> None:
    _, root = llama
    base = ["--atlas", root, "edit", "llama"]
    err = assert_one_error_line(
        run_cli(*base, "--direction", "987654", "--eps", "-1", "--prompt", "a", "--target", "b")
    )
    assert "no direction 987654" in err
    err = assert_one_error_line(
        run_cli(*base, "--direction", "1", "--eps", "-2", "--prompt", "a", "--target", "b")
    )
    assert "--eps: must be a finite number >= -1" in err and "not -2.0" in err
    nan = run_cli(*base, "--direction", "1", "--eps", "nan", "--prompt", "a", "--target", "b")
    assert nan.returncode == 2  # a bad value, in the library's words
    assert "--eps: must be a finite number >= -1" in assert_one_error_line(nan)
    err = assert_one_error_line(
        run_cli(
            *base,
            "--direction",
            "1",
            "--eps",
            "-1",
            "--prompt",
            "a",
            "--prompt",
            "b",
            "--target",
            "c",
        )  # fmt: skip
    )
    assert "one --target per --prompt" in err
    err = assert_one_error_line(
        run_cli(
            *base,
            "--direction",
            "1",
            "--direction",
            "2",
            "--eps",
            "-1",
            "--eps",
            "1",
            "--eps",
            "0.5",
            "--prompt",
            "a",
            "--target",
            "b",
        )  # fmt: skip
    )
    assert "--eps: give one for all directions or one per --direction" in err
    err = assert_one_error_line(
        run_cli(
            "--atlas",
            minilm_atlas,
            "edit",
            "minilm",
            "--direction",
            "0",
            "--eps",
            "-1",
            "--prompt",
            "the cat",
            "--target",
            "sat",
        )  # fmt: skip
    )
    assert "not a causal language model" in err
