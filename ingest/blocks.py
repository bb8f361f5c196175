"""Reading a model one transformer block at a time, through TransformerLens.

TransformerLens is the one source of architecture knowledge here: its adapters know which
checkpoint tensors make up W_V, W_O, W_in, W_gate and W_out, how to convert them (fused QKV
split, transposes, grouped key/value heads), and its weight processing folds and centres them.
To use all of that without holding the model, block i is booted as a one-block model:

1. the architecture's Hugging Face class (as TransformerLens picks it) is built on the meta
   device from the checkpoint's configuration with one layer and a one-token vocabulary;
2. its parameters are filled from the checkpoint: the block's from block i's tensors (the
   names differ only in the block index, under the block list TransformerLens's adapter
   names), everything outside the block with zeros, which no block matrix depends on;
3. it is wrapped in a ``TransformerBridge``, processed (``raw`` or ``tl``) and its matrices are
   read, as for a whole model.

The unembedding comes once, from the one-block model of block 0 built with the full vocabulary
and the checkpoint's embedding, final norm and unembedding. Peak memory is one block plus the
unembedding, whatever the number of layers; weights are read in their stored precision and
converted one block at a time.
"""

from __future__ import annotations

import copy
import gc
from dataclasses import dataclass, field
from typing import Any

import torch

from atlas.core.errors import AtlasError, one_line
from atlas.models import hub
from atlas.models.loading import (
    ModelSpec,
    apply_processing,
    check_choices,
    config_and_tokenizer,
    vocabulary_of,
)
from ingest.checkpoint import CheckpointTensors, TensorSource
from ingest.weights import ModelWeights, extract_weights

# Config fields a one-block, one-token model must not keep: token ids past its vocabulary.
_TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
                    "cls_token_id", "decoder_start_token_id")  # fmt: skip


@dataclass
class ModelInfo:
    """What the atlas records about a model's shape (``models`` row)."""

    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    gated_mlp: bool
    positional_embedding: str
    processing_applied: list[str] = field(default_factory=list)


def model_info(cfg: Any, n_layers: int, processing_applied: list[str]) -> ModelInfo:
    """What the atlas records about a model's shape, from a bridge's configuration."""
    return ModelInfo(
        architecture=str(getattr(cfg, "original_architecture", None) or cfg.architecture),
        n_layers=n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        d_vocab=cfg.d_vocab,
        gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
        positional_embedding=str(getattr(cfg, "positional_embedding_type", "standard")),
        processing_applied=processing_applied,
    )


class BlockLoader:
    """One block of a checkpoint at a time (see the module notes).

    ``tensors`` names the checkpoint's tensors (``ingest.checkpoint``), ``hf_config`` is its
    full configuration and ``tokenizer`` its tokenizer; ``name`` is what TransformerLens is
    told the model is called.
    """

    def __init__(
        self,
        name: str,
        hf_config: Any,
        tensors: TensorSource,
        tokenizer: Any,
        dtype: torch.dtype,
        processing: str,
    ):
        # The Hugging Face source's own names (its ``__all__``): the architecture TransformerLens
        # reads from a config, and the model class it boots for it. No top-level name does
        # this; pyproject pins transformer_lens below 5, so a move breaks here, loudly.
        from transformer_lens.model_bridge.sources.transformers import (
            determine_architecture_from_hf_config,
            get_hf_model_class_for_architecture,
        )

        self.name, self.hf_config, self.tensors = name, hf_config, tensors
        self.tokenizer, self.dtype, self.processing = tokenizer, dtype, processing
        self.n_blocks = int(hf_config.num_hidden_layers)
        try:
            architecture = determine_architecture_from_hf_config(hf_config)
        except ValueError as exc:
            raise AtlasError(f"{name}: {one_line(exc)}") from None
        self._model_class = get_hf_model_class_for_architecture(architecture)
        self._names = tensors.names()
        self._blocks_path = ""  # the block list's module path, learnt from the first bridge
        self._missing: list[str] = []  # parameters block 0's model had no tensor for
        first, applied = self._boot(0, full_vocabulary=True)
        self._blocks_path = first.adapter.component_mapping["blocks"].name
        lacking = [name for name in self._missing if self._in_block(name, self._prefix)]
        if lacking:
            raise AtlasError(f"{name}: block 0 has no tensor for {lacking[0]}")
        self.vocabulary = vocabulary_of(tokenizer, first.cfg.d_vocab)
        self.info = model_info(first.cfg, self.n_blocks, applied)
        weights = extract_weights(first, "cpu")
        self._unembedding = weights.W_U
        self._first: ModelWeights | None = weights
        del first
        gc.collect()  # the full-vocabulary bridge: several embedding-sized copies

    def unembedding(self) -> torch.Tensor:
        """The centered unembedding ``[d_model, d_vocab]`` (float32, CPU)."""
        return self._unembedding

    def block(self, i: int) -> ModelWeights:
        """Block ``i``'s matrices (one layer; on the CPU, float32 unless asked otherwise)."""
        if i == 0 and self._first is not None:
            weights, self._first = self._first, None
            return weights
        return extract_weights(self._boot(i, full_vocabulary=False)[0], "cpu")

    def _boot(self, i: int, full_vocabulary: bool) -> tuple[Any, list[str]]:
        from transformer_lens.model_bridge import TransformerBridge

        skeleton = self._skeleton(i, full_vocabulary)
        try:
            with hub.quiet():  # the model and tokenizer are given: no file is looked up
                bridge = TransformerBridge.boot_transformers(
                    self.name, hf_model=skeleton, device="cpu", dtype=self.dtype,
                    tokenizer=copy.deepcopy(self.tokenizer),  # booting changes it
                )  # fmt: skip
        except Exception as exc:  # transformers and TransformerLens raise many types
            raise AtlasError(f"cannot read block {i} of {self.name}: {one_line(exc)}") from exc
        return bridge, apply_processing(bridge, self.processing)

    def _skeleton(self, i: int, full_vocabulary: bool) -> Any:
        """The one-block Hugging Face model of block ``i``, its parameters filled."""
        from accelerate import init_empty_weights

        config = _one_block_config(self.hf_config, i, full_vocabulary)
        with init_empty_weights(), hub.quiet():
            model = self._model_class.from_config(config)
        model.tie_weights()
        prefix = self._prefix = getattr(model, "base_model_prefix", "")
        state = {}
        for name, param in model.named_parameters():
            source = self._checkpoint_name(name, i, prefix)
            in_block = self._in_block(name, prefix)
            if source is not None and (full_vocabulary or in_block):
                tensor = self.tensors.get(source).to(self.dtype)
                if tuple(tensor.shape) != tuple(param.shape):
                    raise AtlasError(
                        f"{self.name}: tensor {source} has shape {tuple(tensor.shape)}, the "
                        f"architecture expects {tuple(param.shape)}"
                    )
            elif in_block and self._blocks_path:
                raise AtlasError(f"{self.name}: block {i} has no tensor for {name}")
            else:  # outside the block (or not in the checkpoint: an untrained head)
                if source is None:
                    self._missing.append(name)
                tensor = torch.zeros(param.shape, dtype=self.dtype)
            state[name] = tensor
        model.load_state_dict(state, assign=True, strict=False)
        model.tie_weights()
        return model.eval()

    def _in_block(self, name: str, prefix: str) -> bool:
        if not self._blocks_path:  # block 0's own boot: everything is read as stored
            return True
        return _strip(name, prefix).startswith(_strip(self._blocks_path, prefix) + ".0.")

    def _checkpoint_name(self, name: str, i: int, prefix: str) -> str | None:
        """The checkpoint's name for parameter ``name`` of the one-block model of block ``i``:
        the block index moved, and the base model's prefix added or dropped as the checkpoint
        has it (a headless checkpoint in a model with a head), as Hugging Face loading does."""
        if self._blocks_path and self._in_block(name, prefix):
            blocks = _strip(self._blocks_path, prefix)
            name = _strip(name, prefix).replace(f"{blocks}.0.", f"{blocks}.{i}.", 1)
            if prefix and f"{prefix}.{name}" in self._names:
                return f"{prefix}.{name}"
        bare = _strip(name, prefix)
        for candidate in (name, bare, f"{prefix}.{bare}" if prefix else bare):
            if candidate in self._names:
                return candidate
        return None


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else name


def _one_block_config(hf_config: Any, i: int, full_vocabulary: bool) -> Any:
    """``hf_config`` for a model of block ``i`` alone: one layer (per-layer lists cut to the
    block's entry) and, unless ``full_vocabulary``, one token."""
    config = copy.deepcopy(hf_config)
    n_layers = int(hf_config.num_hidden_layers)
    for key, value in vars(hf_config).items():
        if isinstance(value, list | tuple) and len(value) == n_layers and n_layers > 1:
            setattr(config, key, type(value)([value[i]]))
    config.num_hidden_layers = 1
    if not full_vocabulary:
        config.vocab_size = 1
        for key in _TOKEN_ID_FIELDS:
            if getattr(config, key, None) is not None:
                setattr(config, key, None)
    return config


def open_blocks(spec: ModelSpec, dtype: str = "float32", processing: str = "raw") -> BlockLoader:
    """The blocks of the model ``spec`` names, one at a time."""
    check_choices(dtype, processing)
    tensors: TensorSource
    if spec.shape is not None:
        from atlas.models.random_models import RandomTensors, random_config, random_tokenizer

        tensors, config, tokenizer = (
            RandomTensors(spec.shape),
            random_config(spec.shape),
            random_tokenizer(spec.shape),
        )
        name = f"random-{spec.shape}"
    else:
        assert spec.folder is not None
        config, tokenizer = config_and_tokenizer(spec.folder)
        tensors, name = CheckpointTensors(spec.folder), str(spec.folder)
    return BlockLoader(name, config, tensors, tokenizer, getattr(torch, dtype), processing)
