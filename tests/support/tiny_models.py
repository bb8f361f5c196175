"""Small random GPT-2-style models (own W_V per head, causal) built in-process for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atlas.models.loading import LoadedModel, vocabulary_of
from ingest.job import IngestOptions, ingest
from tests.support.helpers import quiet

# The MiniLM word pieces start with ~1000 [unused] entries; 8000 covers plenty of real words.
TINY_VOCAB = 8000


def tiny_gpt2(n_layers: int = 3, seed: int = 1) -> LoadedModel:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import boot as boot_native

    from atlas.models.bundled import minilm_words
    from atlas.models.random_models import wordlevel_tokenizer

    fields: dict[str, Any] = {
        "act_fn": "gelu_new",
        "normalization_type": "LN",
        "n_layers": n_layers,
        "n_heads": 4,
        "d_model": 64,
        "d_head": 16,
        "d_mlp": 256,
        "d_vocab": TINY_VOCAB,
        "n_ctx": 64,
        "seed": seed,
    }
    config = TransformerBridgeConfig.from_dict(fields)
    tokenizer = wordlevel_tokenizer(minilm_words(), TINY_VOCAB)
    bridge = boot_native(config, tokenizer=tokenizer, device="cpu", model_name="tiny")
    vocab = vocabulary_of(tokenizer, TINY_VOCAB)
    return LoadedModel(bridge, "tiny", "tiny", "tiny random GPT-2 (tests)", vocab)


def ingest_loaded(root: Path, loaded: LoadedModel, model_id: str) -> None:
    ingest(
        root,
        IngestOptions(model=loaded.spec, model_id=model_id, device="cpu"),
        loaded=loaded,
        log=quiet,
    )
