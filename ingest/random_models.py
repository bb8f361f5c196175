"""Random-weight models of real shapes, for benchmarks and tests (no download needed).

Their tokenizer is a word-level vocabulary made of the bundled MiniLM's real WordPiece entries
(so token strings read as words), padded with ``[extra_N]`` entries up to the model's vocabulary
size. Weights are random, so their directions mean nothing; shapes and costs are real.
"""

from __future__ import annotations

from typing import Any

from ingest.options import RANDOM_PREFIX

__all__ = ["RANDOM_PREFIX", "RANDOM_SHAPES", "random_config", "wordlevel_tokenizer"]

RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-small": dict(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072),
    "gpt2-medium": dict(n_layers=24, n_heads=16, d_model=1024, d_head=64, d_mlp=4096),
    "gpt2-large": dict(n_layers=36, n_heads=20, d_model=1280, d_head=64, d_mlp=5120),
    "gpt2-xl": dict(n_layers=48, n_heads=25, d_model=1600, d_head=64, d_mlp=6400),
    # A Llama-style shape: gated SiLU MLP, grouped-query attention, RMSNorm, rotary positions.
    "llama-tiny": dict(
        n_layers=4,
        n_heads=8,
        n_key_value_heads=2,
        d_model=256,
        d_head=32,
        d_mlp=688,
        d_vocab=32000,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=32,
        n_ctx=2048,
    ),
}
GPT2_DEFAULTS: dict[str, Any] = dict(
    d_vocab=50257, n_ctx=1024, act_fn="gelu_new", normalization_type="LN"
)


def random_config(shape: str, seed: int = 0) -> dict[str, Any]:
    """The TransformerBridgeConfig fields for a named shape."""
    return {**GPT2_DEFAULTS, **RANDOM_SHAPES[shape], "seed": seed}


def wordlevel_tokenizer(words: list[str], d_vocab: int) -> Any:
    """A fast word-level tokenizer over ``words``, padded with ``[extra_N]`` to ``d_vocab``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for word in words:
        if len(vocab) == d_vocab:
            break
        vocab.setdefault(word, len(vocab))
    for i in range(d_vocab - len(vocab)):
        vocab[f"[extra_{i}]"] = len(vocab)
    unk = "[UNK]" if "[UNK]" in vocab else next(iter(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk)
