"""Random-weight models of real shapes, for benchmarks and tests (no download needed).

A shape is a Hugging Face configuration (GPT-2 or Llama), so the model is read through the same
TransformerLens adapters, block by block, as any checkpoint. Its weights are generated on
demand, one tensor at a time, each from a seed derived from the shape and the tensor's name:
block i's weights cost no more memory than block i, and are the same on every machine and in
any order. Matrices are N(0, 0.02) (GPT-2's initializer range), norm scales 1 + N(0, 0.1) and
biases N(0, 0.02), so that weight processing (folding norms, centring) visibly changes them.
:func:`save_random_model` writes the same weights as a local Hugging Face folder.

The tokenizer is a word-level vocabulary made of the bundled MiniLM's real WordPiece entries (so
token strings read as words), padded with ``[extra_N]`` entries up to the model's vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from atlas.models.choices import RANDOM_PREFIX

__all__ = [
    "RANDOM_PREFIX",
    "RANDOM_SHAPES",
    "RandomTensors",
    "gpt2_fields",
    "random_config",
    "save_random_model",
    "wordlevel_tokenizer",
]

INIT_STD = 0.02
NORM_STD = 0.1
_GPT2 = {"vocab_size": 50257, "n_positions": 1024, "activation_function": "gelu_new"}
_LLAMA = {"vocab_size": 32000, "max_position_embeddings": 2048, "tie_word_embeddings": False}
RANDOM_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    # GPT-2's architecture at a toy size: seconds to save, shard and ingest (tests, trying out).
    "gpt2-tiny": ("gpt2", {**_GPT2, "vocab_size": 4096, "n_positions": 128, "n_layer": 3,
                           "n_head": 4, "n_embd": 64}),
    "gpt2-small": ("gpt2", {**_GPT2, "n_layer": 12, "n_head": 12, "n_embd": 768}),
    "gpt2-medium": ("gpt2", {**_GPT2, "n_layer": 24, "n_head": 16, "n_embd": 1024}),
    "gpt2-large": ("gpt2", {**_GPT2, "n_layer": 36, "n_head": 20, "n_embd": 1280}),
    "gpt2-xl": ("gpt2", {**_GPT2, "n_layer": 48, "n_head": 25, "n_embd": 1600}),
    # Llama-style: gated SiLU MLP, grouped-query attention, RMSNorm, rotary positions.
    "llama-tiny": (
        "llama",
        {**_LLAMA, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
         "num_key_value_heads": 2, "intermediate_size": 688},
    ),
    "llama-7b": (
        "llama",
        {**_LLAMA, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
         "num_key_value_heads": 8, "intermediate_size": 11008},
    ),
}  # fmt: skip


def gpt2_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """GPT-2 configuration fields with its end-of-text token (bos and eos) the vocabulary's last,
    as in GPT-2 (50256 of 50257): its default id is outside a smaller vocabulary, which
    transformers warns about on every load."""
    last = fields["vocab_size"] - 1
    return {"bos_token_id": last, "eos_token_id": last, **fields}


def random_config(shape: str) -> Any:
    """The Hugging Face configuration of a named shape."""
    from transformers import GPT2Config, LlamaConfig

    family, fields = RANDOM_SHAPES[shape]
    config: Any
    if family == "gpt2":
        config = GPT2Config(**gpt2_fields(fields))
        config.architectures = ["GPT2LMHeadModel"]
    else:
        config = LlamaConfig(**fields)
        config.architectures = ["LlamaForCausalLM"]
    return config


class RandomTensors:
    """A random model's weights by parameter name, generated on demand (see the module notes).

    ``config`` overrides the shape's configuration (a benchmark's 12-layer cut of gpt2-xl, say):
    tensors of the same name are the same whatever the configuration.
    """

    def __init__(self, shape: str, config: Any = None):
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        self.shape = shape
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(config or random_config(shape))
        skeleton.tie_weights()
        # parameters only (buffers are computed, not learned), tied ones once (under the name
        # a checkpoint stores them by)
        self._shapes = {k: tuple(v.shape) for k, v in skeleton.named_parameters()}

    def names(self) -> set[str]:
        return set(self._shapes)

    def get(self, name: str) -> Any:
        """The tensor ``name`` (float32), the same on every call and every machine."""
        import torch

        size = self._shapes[name]
        seed = int.from_bytes(hashlib.sha256(f"{self.shape}/{name}".encode()).digest()[:8], "big")
        generator = torch.Generator().manual_seed(seed & (2**63 - 1))
        noise = torch.randn(size, generator=generator)
        if len(size) == 1 and name.endswith("weight"):  # a norm's scale
            return 1.0 + NORM_STD * noise
        return INIT_STD * noise


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


def random_tokenizer(shape: str, config: Any = None) -> Any:
    """The shape's word-level tokenizer, of ``config``'s vocabulary size where one is given."""
    from atlas.models.bundled import minilm_words

    return wordlevel_tokenizer(minilm_words(), (config or random_config(shape)).vocab_size)


def save_random_model(shape: str, folder: str | Path, shards: int = 1, config: Any = None) -> Path:
    """Write a random model as a Hugging Face folder (config, tokenizer, ``shards`` safetensors
    files with an index when there are several). One shard's tensors are in memory while it is
    written; ingest itself never needs the folder. ``config``: as for :class:`RandomTensors`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (config or random_config(shape)).save_pretrained(folder)
    random_tokenizer(shape, config).save_pretrained(folder)
    tensors = RandomTensors(shape, config)
    names = sorted(tensors.names())
    parts = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for n, part in enumerate(parts, 1):
        file = "model.safetensors" if shards == 1 else f"model-{n:05d}-of-{shards:05d}.safetensors"
        save_file({name: tensors.get(name).contiguous() for name in part}, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    if shards > 1:
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder
