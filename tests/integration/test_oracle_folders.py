"""Local Hugging Face folders (GPT-2 and Llama shapes, random weights) against numpy.

Two models are built with ``transformers`` directly and saved as ordinary model folders; the
project ingests each folder twice (``raw`` and ``tl`` weight processing) into one atlas. Every
stored spectrum, singular vector, canonical sign and top-token list is then compared with numpy
run on the folder's own ``model.safetensors``; none of the project's weight-extraction code is
used. The ``tl`` matrices come from a numpy reimplementation of TransformerLens's
``ProcessWeights.process_weights`` (fold_ln, center_writing_weights, center_unembed).

The Llama folder has grouped-query attention (4 query heads over 2 key-value heads), a gated
SiLU MLP, RMSNorm and *untied* embeddings (``lm_head`` differs from ``embed_tokens``); the
GPT-2 folder ties its unembedding to its embedding, as GPT-2 does. Every norm weight (and
GPT-2's norm biases) is randomized, so that folding a norm is visible in the spectra.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import atlas
from tests.support.helpers import quiet
from tests.support.oracle import vocabulary

N_LAYERS, N_HEADS, D_MODEL, D_HEAD = 2, 4, 64, 16
N_KV_HEADS = 2  # Llama: query head h reads key-value head h // (N_HEADS // N_KV_HEADS)
GPT2_D_MLP, LLAMA_D_MLP = 256, 160
D_VOCAB = 3000  # MiniLM's first 3000 WordPiece entries ("the" is 1996, "of" 1997)
MODELS = ("gpt2-raw", "gpt2-tl", "llama-raw", "llama-tl")
JUDGED_SIDE = {"ov": "write", "mlp_in": "read", "mlp_gate": "read", "mlp_out": "write"}
# 1 - |cos| allowed between a stored float32 unit vector and numpy's (float64) one.
COS_TOL = 1e-5
Key = tuple[str, int, int | None]  # (kind, layer, head)


# --- the folders --------------------------------------------------------------------------


def wordlevel_tokenizer() -> Any:
    """An offline fast tokenizer: MiniLM's first D_VOCAB vocabulary entries, whitespace split."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for word in vocabulary():
        if len(vocab) == D_VOCAB:
            break
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def randomize_norms(model: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Norm weights 1 + N(0, 0.3²) and biases N(0, 0.3²): their folding must show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names):
                p.add_(0.3 * torch.randn_like(p))


def save(model: Any, tokenizer: Any, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def gpt2_folder(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        n_embd=D_MODEL,
        n_inner=GPT2_D_MLP,
        vocab_size=D_VOCAB,
        n_positions=64,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    randomize_norms(model, ("ln_",))
    return save(model, wordlevel_tokenizer(), folder)


def llama_folder(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        intermediate_size=LLAMA_D_MLP,
        vocab_size=D_VOCAB,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    randomize_norms(model, ("norm",))
    return save(model, wordlevel_tokenizer(), folder)


# --- the oracle: numpy on model.safetensors ----------------------------------------------


@dataclass
class Expected:
    """The matrices the atlas must decompose (row-vector convention ``x @ M``) and the
    centered unembedding its directions are scored against."""

    matrices: dict[Key, np.ndarray]
    W_Uc: np.ndarray  # [d_model, d_vocab], mean over the vocabulary removed


def raw_weights(folder: Path) -> dict[str, np.ndarray]:
    return {
        k: v.astype(np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()
    }


def center_d_model(w: np.ndarray, axis: int) -> np.ndarray:
    """TransformerLens's centering: subtract the mean over the d_model axis."""
    return w - w.mean(axis=axis, keepdims=True)


def centered_over_vocab(W_U: np.ndarray) -> np.ndarray:
    return W_U - W_U.mean(axis=1, keepdims=True)


def gpt2_expected(w: dict[str, np.ndarray], tl: bool) -> Expected:
    """GPT-2's Conv1D stores [in, out]; c_attn packs q, k, v along its output axis.

    ``tl`` (LayerNorm): fold_ln scales the rows of W_V / W_in by ln_1 / ln_2 and then centers
    them along d_model; center_writing_weights centers W_O / W_out along d_model; the final LN
    is folded into W_U (scaled, then centered along d_model); center_unembed centers W_U over
    the vocabulary.
    """
    matrices: dict[Key, np.ndarray] = {}
    for layer in range(N_LAYERS):
        p = f"transformer.h.{layer}."
        W_V = w[p + "attn.c_attn.weight"][:, 2 * D_MODEL : 3 * D_MODEL]  # [d_model, H * d_head]
        W_O = w[p + "attn.c_proj.weight"]  # [H * d_head, d_model]
        W_in, W_out = w[p + "mlp.c_fc.weight"], w[p + "mlp.c_proj.weight"]
        if tl:
            W_V = center_d_model(w[p + "ln_1.weight"][:, None] * W_V, axis=0)
            W_in = center_d_model(w[p + "ln_2.weight"][:, None] * W_in, axis=0)
            W_O, W_out = center_d_model(W_O, axis=1), center_d_model(W_out, axis=1)
        for h in range(N_HEADS):
            cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
            matrices["ov", layer, h] = W_V[:, cols] @ W_O[cols]
        matrices["mlp_in", layer, None] = W_in
        matrices["mlp_out", layer, None] = W_out
    W_U = w["transformer.wte.weight"].T  # tied: W_U = W_Eᵀ
    if tl:
        W_U = center_d_model(w["transformer.ln_f.weight"][:, None] * W_U, axis=0)
    return Expected(matrices, centered_over_vocab(W_U))


def llama_expected(w: dict[str, np.ndarray], tl: bool) -> Expected:
    """torch Linear stores [out, in]. ``tl`` (RMSNorm): fold_ln only scales the rows of W_V,
    W_gate and W_in by the norm weights (no centering: RMSNorm does not remove the mean), nothing
    writing is centered, the final norm is folded into W_U and center_unembed centers it over
    the vocabulary."""
    group = N_HEADS // N_KV_HEADS
    matrices: dict[Key, np.ndarray] = {}
    for layer in range(N_LAYERS):
        p = f"model.layers.{layer}."
        W_V = w[p + "self_attn.v_proj.weight"].T  # [d_model, n_kv * d_head]
        W_O = w[p + "self_attn.o_proj.weight"].T  # [H * d_head, d_model]
        W_gate, W_in = w[p + "mlp.gate_proj.weight"].T, w[p + "mlp.up_proj.weight"].T
        if tl:
            W_V = w[p + "input_layernorm.weight"][:, None] * W_V
            scale = w[p + "post_attention_layernorm.weight"][:, None]
            W_gate, W_in = scale * W_gate, scale * W_in
        for h in range(N_HEADS):
            kv = slice((h // group) * D_HEAD, (h // group + 1) * D_HEAD)
            matrices["ov", layer, h] = W_V[:, kv] @ W_O[h * D_HEAD : (h + 1) * D_HEAD]
        matrices["mlp_gate", layer, None] = W_gate
        matrices["mlp_in", layer, None] = W_in
        matrices["mlp_out", layer, None] = w[p + "mlp.down_proj.weight"].T
    W_U = w["lm_head.weight"].T  # untied
    if tl:
        W_U = w["model.norm.weight"][:, None] * W_U
    return Expected(matrices, centered_over_vocab(W_U))


@dataclass
class OracleSVD:
    """numpy's SVD of one matrix, truncated to the atlas's rank, with the canonical sign applied
    by hand; ``sign_clear`` is false where the judged vector's top and bottom scores tie or
    where W_Uc does not see it at all."""

    spectrum: np.ndarray  # every singular value
    read: np.ndarray  # [r, n_in], U's columns as rows
    write: np.ndarray  # [r, n_out], V's columns as rows
    sign_clear: np.ndarray


def oracle_svd(matrix: np.ndarray, rank: int, W_Uc: np.ndarray, kind: str) -> OracleSVD:
    u, s, vh = np.linalg.svd(matrix)
    read, write = u[:, :rank].T, vh[:rank]
    judge = (write if JUDGED_SIDE[kind] == "write" else read) @ W_Uc
    top, bottom = judge.max(axis=1), judge.min(axis=1)
    sign = np.where(-bottom > top, -1.0, 1.0)[:, None]
    largest = np.maximum(top, -bottom)
    # A vector W_Uc cannot see (e.g. the null direction of a centered W_in) has no sign.
    visible = largest > 1e-6 * np.linalg.norm(W_Uc, axis=0).max()
    clear = visible & (np.abs(top + bottom) > 1e-4 * largest)
    return OracleSVD(s, read * sign, write * sign, clear)


# --- the atlas ----------------------------------------------------------------------------


@dataclass
class Folders:
    gpt2: Path
    llama: Path

    def of(self, model_id: str) -> Path:
        return self.gpt2 if model_id.startswith("gpt2") else self.llama


@dataclass
class Stored:
    """One matrix's stored rows."""

    spectrum: np.ndarray
    rank: int
    sigma: np.ndarray  # [r]
    degenerate: np.ndarray  # [r]
    vectors: dict[str, np.ndarray]  # side -> [r, d_model]
    ids: dict[str, np.ndarray]  # side -> [r] direction ids


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
    base = tmp_path_factory.mktemp("hf_folders")
    return Folders(gpt2_folder(base / "gpt2-tiny"), llama_folder(base / "llama-tiny"))


@pytest.fixture(scope="module")
def atlas_root(folders: Folders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both folders, each ingested with ``raw`` and with ``tl`` weights, in one atlas."""
    from ingest.job import IngestOptions, ingest

    root = tmp_path_factory.mktemp("folders_atlas") / "atlas"
    for model_id in MODELS:
        processing = model_id.split("-")[1]
        options = IngestOptions(
            model=str(folders.of(model_id)), model_id=model_id, device="cpu", processing=processing
        )
        ingest(root, options, log=quiet)
    return root


@pytest.fixture(scope="module")
def opened(atlas_root: Path) -> Iterator[atlas.Atlas]:
    with atlas.open(atlas_root) as a:
        yield a


def expected_of(folders: Folders, model_id: str) -> Expected:
    arch, processing = model_id.split("-")
    build = gpt2_expected if arch == "gpt2" else llama_expected
    return build(raw_weights(folders.of(model_id)), processing == "tl")


def stored_matrices(a: atlas.Atlas, model_id: str) -> dict[Key, Stored]:
    """The OV and MLP matrices (QK circuits have their own oracle: test_circuits_oracle.py)."""
    spectra = a.sql(
        "SELECT kind, layer, head, rank, spectrum FROM matrices WHERE model_id = ? "
        "AND kind <> 'qk'",
        [model_id],
    ).to_pylist()
    rows = a.sql(
        "SELECT kind, layer, head, sv_index, side, sigma, degenerate, vector, direction_id "
        "FROM directions WHERE model_id = ? AND kind <> 'qk' "
        "ORDER BY kind, layer, head, sv_index, side",
        [model_id],
    ).to_pylist()
    out: dict[Key, Stored] = {}
    for m in spectra:
        key = (m["kind"], m["layer"], m["head"])
        mine = [r for r in rows if (r["kind"], r["layer"], r["head"]) == key]
        sides = sorted({r["side"] for r in mine})
        first = [r for r in mine if r["side"] == sides[0]]
        out[key] = Stored(
            spectrum=np.array(m["spectrum"], dtype=np.float64),
            rank=m["rank"],
            sigma=np.array([r["sigma"] for r in first]),
            degenerate=np.array([r["degenerate"] for r in first]),
            vectors={
                s: np.array([r["vector"] for r in mine if r["side"] == s], dtype=np.float64)
                for s in sides
            },
            ids={s: np.array([r["direction_id"] for r in mine if r["side"] == s]) for s in sides},
        )
    return out


@dataclass
class Case:
    model_id: str
    expected: Expected
    stored: dict[Key, Stored]
    oracle: dict[Key, OracleSVD]


@pytest.fixture(scope="module", params=MODELS)
def case(request: pytest.FixtureRequest, folders: Folders, opened: atlas.Atlas) -> Case:
    model_id: str = request.param
    expected = expected_of(folders, model_id)
    stored = stored_matrices(opened, model_id)
    oracle = {
        key: oracle_svd(m, stored[key].rank, expected.W_Uc, key[0])
        for key, m in expected.matrices.items()
        if key in stored
    }
    return Case(model_id, expected, stored, oracle)


def well_separated(got: Stored) -> np.ndarray:
    ok = ~got.degenerate
    assert ok.sum() >= 0.9 * len(ok), "random weights leave almost every direction separated"
    return ok


# --- every head and every MLP matrix against numpy ------------------------------------------


def test_every_head_and_mlp_matrix_of_the_folder_is_in_the_atlas(case: Case) -> None:
    assert set(case.stored) == set(case.expected.matrices)
    for key, got in case.stored.items():
        matrix = case.expected.matrices[key]
        s = case.oracle[key].spectrum
        if key[0] == "ov":  # W_V[h] W_O[h] has rank d_head, and the atlas keeps exactly that
            assert got.rank == D_HEAD and (s[D_HEAD:] < 1e-6 * s[0]).all()
        else:
            assert got.rank == min(matrix.shape)
        assert set(got.vectors) == ({"read", "write"} if key[0] == "ov" else {JUDGED_SIDE[key[0]]})
        for side, vectors in got.vectors.items():
            width = matrix.shape[0] if side == "read" else matrix.shape[1]
            assert vectors.shape == (got.rank, width) and width == D_MODEL


def test_spectra_equal_numpy_svd_of_the_raw_safetensors(case: Case) -> None:
    for key, got in case.stored.items():
        s = case.oracle[key].spectrum
        n = len(got.spectrum)
        assert n >= got.rank
        np.testing.assert_allclose(
            got.spectrum, s[:n], rtol=1e-4, atol=1e-5 * s[0], err_msg=str(key)
        )
        np.testing.assert_allclose(got.sigma, s[: got.rank], rtol=1e-4, atol=1e-5 * s[0])


def test_singular_vectors_equal_numpy_up_to_sign(case: Case) -> None:
    for key, got in case.stored.items():
        want, ok = case.oracle[key], well_separated(got)
        for side, vectors in got.vectors.items():
            assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
            cos = np.abs((vectors * getattr(want, side)).sum(axis=1))
            assert (cos[ok] > 1 - COS_TOL).all(), f"{key} {side}: min |cos| {cos[ok].min():.7f}"


def test_stored_sign_is_the_canonical_one_numpy_chooses(case: Case) -> None:
    """With numpy's vectors flipped by the rule by hand, the stored vectors agree in sign too,
    and the two sides of an OV triple carry the same flip (uᵀ M v = +σ)."""
    for key, got in case.stored.items():
        want, ok = case.oracle[key], well_separated(got)
        for side, vectors in got.vectors.items():
            cos = (vectors * getattr(want, side)).sum(axis=1)
            check = ok & want.sign_clear
            assert check.sum() >= 0.9 * len(check) - 1, f"{key}: too few directions to judge"
            assert (cos[check] > 1 - COS_TOL).all(), f"{key} {side}: flipped"
        if key[0] == "ov":
            matrix = case.expected.matrices[key]
            pair = np.einsum("ri,ij,rj->r", got.vectors["read"], matrix, got.vectors["write"])
            np.testing.assert_allclose(pair, got.sigma, rtol=1e-4, atol=1e-5 * got.sigma[0])


def test_judged_vectors_score_largest_positive_against_centered_unembedding(case: Case) -> None:
    for key, got in case.stored.items():
        scores = got.vectors[JUDGED_SIDE[key[0]]] @ case.expected.W_Uc
        top, bottom = scores.max(axis=1), scores.min(axis=1)
        assert (top >= -bottom - 1e-5 * top).all(), f"{key}: a judged vector scores most negative"


def test_top_tokens_equal_numpy_projection_of_numpy_vectors(
    case: Case, opened: atlas.Atlas
) -> None:
    """numpy's canonical vectors through numpy's centered W_U give the stored top-k and bottom-k
    (scores to 1e-4 of the largest, plus what the float32 vector's own error can explain)."""
    k = opened.sql("SELECT top_k FROM models WHERE model_id = ?", [case.model_id]).to_pylist()
    k = k[0]["top_k"]
    vectors, slack, ids = [], [], []
    for key, got in case.stored.items():
        want = case.oracle[key]
        sample = ~got.degenerate & want.sign_clear
        for side in got.vectors:
            vectors.append(getattr(want, side)[sample])
            slack.append(np.linalg.norm(got.vectors[side] - getattr(want, side), axis=1)[sample])
            ids.append(got.ids[side][sample])
    order = np.argsort(np.concatenate(ids))
    direction_ids = np.concatenate(ids)[order]
    scores = (np.concatenate(vectors) @ case.expected.W_Uc)[order]
    column_norm = np.linalg.norm(case.expected.W_Uc, axis=0).max()
    tol = (1e-4 * np.abs(scores).max() + np.concatenate(slack)[order] * column_norm)[:, None]
    rows = opened.sql(
        "SELECT direction_id, polarity, rank, token_id, score FROM top_tokens WHERE basis = "
        "'unembed' AND list_contains(?, direction_id) ORDER BY direction_id, polarity DESC, rank",
        [direction_ids.tolist()],
    ).to_pydict()
    assert len(direction_ids) > 0.9 * sum(
        len(v) for g in case.stored.values() for v in g.ids.values()
    )
    got_ids = np.array(rows["token_id"]).reshape(len(order), 2 * k)
    got_scores = np.array(rows["score"], dtype=np.float64).reshape(len(order), 2 * k)
    assert (np.array(rows["direction_id"]).reshape(-1, 2 * k)[:, 0] == direction_ids).all()
    assert np.array(rows["polarity"]).reshape(-1, 2 * k)[0].tolist() == ["pos"] * k + ["neg"] * k
    assert np.array(rows["rank"]).reshape(-1, 2 * k)[0].tolist() == [*range(k), *range(k)]
    ranked = np.sort(scores, axis=1)
    expected = np.concatenate([ranked[:, ::-1][:, :k], ranked[:, :k]], axis=1)
    assert (np.abs(got_scores - expected) <= tol).all()
    # the stored token ids are those scores' tokens (near-ties may come in either order)
    assert (np.abs(np.take_along_axis(scores, got_ids, axis=1) - got_scores) <= tol).all()


def test_top_neurons_are_the_largest_entries_of_numpys_partner_vector(
    case: Case, opened: atlas.Atlas
) -> None:
    """An MLP direction's top neurons: the largest |entries| of numpy's neuron-side singular
    vector (signed by the canonical rule), with those entries as weights."""
    neuron_side = {"mlp_in": "write", "mlp_gate": "write", "mlp_out": "read"}
    checked = 0
    for key, got in case.stored.items():
        if key[0] not in neuron_side:
            continue
        residual_side = "read" if neuron_side[key[0]] == "write" else "write"
        want = case.oracle[key]
        partners = getattr(want, neuron_side[key[0]])
        for sv in np.flatnonzero(~got.degenerate & want.sign_clear)[:4]:
            rows = opened.sql(
                "SELECT neuron, weight FROM top_neurons WHERE direction_id = ? ORDER BY rank",
                [int(got.ids[residual_side][sv])],
            ).to_pydict()
            k = len(rows["neuron"])
            assert k > 0
            partner = partners[sv]
            magnitude = np.sort(np.abs(partner))[::-1]
            # the stored neurons are the k largest (near-ties at the cut may swap)
            assert (np.abs(partner[rows["neuron"]]) >= magnitude[k - 1] - 1e-5).all()
            np.testing.assert_allclose(rows["weight"], partner[rows["neuron"]], atol=1e-4)
            checked += 1
    assert checked >= 4


# --- the Llama folder's grouped-query heads and gated MLP -----------------------------------


def spectrum_error(got: np.ndarray, matrix: np.ndarray) -> float:
    s = np.linalg.svd(matrix, compute_uv=False)[: len(got)]
    return float(np.abs(got - s).max() / s[0])


def test_llama_query_head_h_reads_value_head_h_over_group_size(
    folders: Folders, opened: atlas.Atlas
) -> None:
    w, stored = raw_weights(folders.llama), stored_matrices(opened, "llama-raw")
    group = N_HEADS // N_KV_HEADS
    for layer in range(N_LAYERS):
        W_V = w[f"model.layers.{layer}.self_attn.v_proj.weight"].T
        W_O = w[f"model.layers.{layer}.self_attn.o_proj.weight"].T
        for h in range(N_HEADS):
            got = stored["ov", layer, h].spectrum
            errors = [
                spectrum_error(
                    got,
                    W_V[:, kv * D_HEAD : (kv + 1) * D_HEAD] @ W_O[h * D_HEAD : (h + 1) * D_HEAD],
                )
                for kv in range(N_KV_HEADS)
            ]
            assert errors[h // group] < 1e-4, (layer, h, errors)
            # any other pairing (e.g. h % n_kv_heads) gives a visibly different spectrum
            assert all(e > 1e-2 for kv, e in enumerate(errors) if kv != h // group)


@pytest.mark.parametrize("model_id", ["llama-raw", "llama-tl"])
def test_llama_gate_up_and_down_projections_are_not_swapped(
    model_id: str, folders: Folders, opened: atlas.Atlas
) -> None:
    w, stored = raw_weights(folders.llama), stored_matrices(opened, model_id)
    tl = model_id.endswith("tl")
    for layer in range(N_LAYERS):
        p = f"model.layers.{layer}."
        scale = w[p + "post_attention_layernorm.weight"][:, None] if tl else 1.0
        gate, up = scale * w[p + "mlp.gate_proj.weight"].T, scale * w[p + "mlp.up_proj.weight"].T
        assert spectrum_error(stored["mlp_gate", layer, None].spectrum, gate) < 1e-4
        assert spectrum_error(stored["mlp_gate", layer, None].spectrum, up) > 1e-2
        assert spectrum_error(stored["mlp_in", layer, None].spectrum, up) < 1e-4
        assert spectrum_error(stored["mlp_in", layer, None].spectrum, gate) > 1e-2
        down = w[p + "mlp.down_proj.weight"].T
        assert stored["mlp_out", layer, None].vectors["write"].shape == (D_MODEL, D_MODEL)
        assert spectrum_error(stored["mlp_out", layer, None].spectrum, down) < 1e-4


# --- tl weight processing ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tl_spectra_move_away_from_raw_exactly_where_transformer_lens_changes_a_matrix(
    arch: str, folders: Folders, opened: atlas.Atlas
) -> None:
    """Keeps the tl comparisons above from being vacuous: LayerNorm models change every matrix;
    RMSNorm models scale the readers (W_V, W_gate, W_in) but leave the writers alone."""
    raw, tl = expected_of(folders, f"{arch}-raw"), stored_matrices(opened, f"{arch}-tl")
    changed = {"gpt2": {"ov", "mlp_in", "mlp_out"}, "llama": {"ov", "mlp_gate", "mlp_in"}}[arch]
    for key, got in tl.items():
        moved = spectrum_error(got.spectrum, raw.matrices[key]) > 1e-3
        assert moved == (key[0] in changed), key


@pytest.mark.parametrize("model_id", ["gpt2-tl", "llama-tl"])
def test_processing_applied_names_the_steps_visible_in_the_stored_weights(
    model_id: str, folders: Folders, opened: atlas.Atlas
) -> None:
    """center_writing_weights shows as every OV and MLP write vector being orthogonal to the
    all-ones direction; fold_ln as the readers' spectra differing from the raw weights'."""
    row = opened.sql(
        "SELECT processing, processing_applied FROM models WHERE model_id = ?", [model_id]
    ).to_pylist()[0]
    applied = json.loads(row["processing_applied"])
    assert row["processing"] == "tl"
    raw = expected_of(folders, model_id.replace("-tl", "-raw"))
    stored = stored_matrices(opened, model_id)
    ones = np.full(D_MODEL, D_MODEL**-0.5)
    # (a centered W_out has rank d_model - 1: its null write vector is the ones direction)
    writes = np.concatenate(
        [
            m.vectors["write"][m.sigma > 1e-6 * m.sigma[0]]
            for m in stored.values()
            if "write" in m.vectors
        ]
    )
    centered = bool((np.abs(writes @ ones) < 1e-4).all())
    folded = all(
        spectrum_error(s.spectrum, raw.matrices[key]) > 1e-3
        for key, s in stored.items()
        if key[0] in ("mlp_in", "mlp_gate")
    )
    visible = {"fold_ln": folded, "center_writing_weights": centered}
    assert {step for step, shown in visible.items() if shown} == set(applied) & set(visible)
    assert {"center_unembed", "fold_value_biases"} <= set(applied)


# --- edit on the tl GPT-2 atlas ------------------------------------------------------------


@dataclass
class TopOV:
    direction_id: int
    layer: int
    head: int
    sigma: float


@pytest.fixture(scope="module")
def top_ov(opened: atlas.Atlas) -> TopOV:
    row = opened.sql(
        "SELECT direction_id, layer, head, sigma FROM directions WHERE model_id = 'gpt2-tl' "
        "AND kind = 'ov' AND side = 'write' AND NOT degenerate ORDER BY sigma DESC LIMIT 1"
    ).to_pylist()[0]
    return TopOV(**row)


def test_edit_removing_the_top_ov_direction_moves_the_target_probability(
    opened: atlas.Atlas, top_ov: TopOV
) -> None:
    edits = {top_ov.direction_id: -1.0}
    first = opened.edit("gpt2-tl", edits, [("the", "of")], device="cpu")
    second = opened.edit("gpt2-tl", edits, [("the", "of")], device="cpu")
    assert len(first.edits) == 1 and first.edits[0].direction.direction_id == top_ov.direction_id
    before, after = first.before[0], first.after[0]
    assert 0 < before.probability < 1 and 0 < after.probability < 1
    assert abs(after.probability - before.probability) > 1e-4 * before.probability
    # a fresh boot sees the original weights again: the first edit left nothing behind
    assert second.before == first.before and second.after == first.after
    shown = repr(first)  # a printed report says what was edited, not every float of it
    assert f"direction_id={top_ov.direction_id}" in shown and "route=" in shown
    assert len(shown) < 2_000 and "vector=" not in shown and "tensor(" not in shown


def test_edit_subtracts_numpys_top_triple_and_restores_every_parameter(
    folders: Folders, opened: atlas.Atlas, top_ov: TopOV
) -> None:
    from query.edit import boot_model, concept_edit

    M = expected_of(folders, "gpt2-tl").matrices["ov", top_ov.layer, top_ov.head]
    u, s, vh = np.linalg.svd(M)
    assert np.isclose(s[0], top_ov.sigma, rtol=1e-4)
    bridge = boot_model(opened.reader, "gpt2-tl", "cpu")
    original = {n: p.detach().clone() for n, p in bridge.named_parameters()}
    attn = bridge.blocks[top_ov.layer].attn
    with concept_edit(bridge, opened.reader, {top_ov.direction_id: -1.0}):
        W_V = attn.W_V[top_ov.head].detach().double().numpy()
        W_O = attn.W_O[top_ov.head].detach().double().numpy()
        np.testing.assert_allclose(W_V @ W_O, M - s[0] * np.outer(u[:, 0], vh[0]), atol=1e-6 * s[0])
        assert any(not torch.equal(p, original[n]) for n, p in bridge.named_parameters())
    for name, p in bridge.named_parameters():
        assert torch.equal(p, original[name]), name
