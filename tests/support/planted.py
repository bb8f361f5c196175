"""Small random models with a planted concept, and their own locally built tokenizers."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from atlas.models.bundled import minilm_words
from atlas.models.loading import LoadedModel, vocabulary_of
from atlas.models.random_models import wordlevel_tokenizer


def small_model(words: list[str], seed: int, name: str) -> LoadedModel:
    """A 2-layer random causal model over a word-level vocabulary of ``words``."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import boot

    tokenizer = wordlevel_tokenizer(words, len(words))
    config = TransformerBridgeConfig(
        d_model=64,
        d_head=16,
        n_layers=2,
        n_ctx=64,
        n_heads=4,
        d_vocab=len(words),
        d_mlp=128,
        act_fn="gelu_new",
        normalization_type="LN",
        seed=seed,
    )
    bridge = boot(config, tokenizer=tokenizer, model_name=name)
    return LoadedModel(bridge, name, name, name, vocabulary_of(tokenizer, len(words)))


def plant(loaded: LoadedModel, layer: int, head: int, token: str, scale: float = 20.0) -> None:
    """Make ``head`` write ``token``'s centered unembedding direction (a rank-1 OV circuit)."""
    bridge = loaded.bridge
    token_id = loaded.vocabulary.index(token)
    W_U = bridge.W_U.detach()
    direction = W_U[:, token_id] - W_U.mean(dim=1)
    direction = direction / direction.norm()
    d_head = bridge.cfg.d_head
    reader = torch.randn(d_head, generator=torch.Generator().manual_seed(head)) / d_head**0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge.blocks[layer].attn.W_O.data[head] = scale * torch.outer(reader, direction)


def minilm_vocab_words(n: int = 6000, start: int = 1000) -> list[str]:
    """Real English word pieces (from the bundled MiniLM vocabulary), [UNK] first."""
    words = minilm_words()
    return ["[UNK]", *words[start : start + n]]


def gpt2_style(words: list[str]) -> list[str]:
    """The same words spelled like a byte-level BPE vocabulary (``Ġword``), in another order."""
    rng = np.random.default_rng(7)
    spelled = ["Ġ" + w if not w.startswith("##") else w[2:] for w in words[1:]]
    rng.shuffle(spelled)
    return ["<unk>", *spelled]


PLANTS = {"bert-like": (1, 2, "fire"), "gpt2-like": (0, 3, "Ġfire")}  # layer, head, token


def planted_models() -> dict[str, LoadedModel]:
    """Two small models over the same words, spelled as word pieces and as byte-level BPE,
    each with one head planted (``PLANTS``) to write "fire"."""
    words = minilm_vocab_words()
    models = {
        "bert-like": small_model(words, 1, "bert-like"),
        "gpt2-like": small_model(gpt2_style(words), 2, "gpt2-like"),
    }
    for name, loaded in models.items():
        layer, head, token = PLANTS[name]
        plant(loaded, layer, head, token)
    return models
