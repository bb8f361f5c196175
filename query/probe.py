"""Measuring an edit: each target token's next-token probability and rank after a prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atlas.core.errors import AtlasError


@dataclass
class Probe:
    prompt: str
    target: str  # as the user wrote it
    target_id: int
    target_token: str  # the vocabulary entry it resolved to
    input_ids: list[int]


@dataclass
class Reading:
    probability: float
    rank: int  # 0 = the most likely next token
    # Why the distribution says nothing ("not finite", "uniform"), or None: an overflowed
    # forward pass reads as p = 1/vocabulary and rank 0, which would look like a result.
    broken: str | None = None


def _attention(bridge: Any) -> str:
    """How the booted model attends: "causal" for a next-token predictor."""
    return str(getattr(bridge.cfg, "attention_dir", "causal"))


def require_causal(bridge: Any, model_id: str) -> None:
    """Next-token probabilities mean something only for a causal language model."""
    if (direction := _attention(bridge)) != "causal":
        raise AtlasError(
            f"{model_id!r} is not a causal language model (attention is {direction}); its "
            "TransformerLens LM head is randomly initialised, so target probabilities would be "
            "meaningless. Edit it from Python (query.edit.concept_edit) and measure what fits"
        )


def encode_prompt(bridge: Any, prompt: str) -> list[int]:
    """The prompt's token ids, with the model's BOS first where it uses one."""
    tok = bridge.tokenizer
    ids = list(tok.encode(prompt, add_special_tokens=False))
    bos = tok.bos_token_id
    prepend = getattr(bridge.cfg, "default_prepend_bos", True)
    # Only a BOS the vocabulary really holds (the random models' word-level tokenizer has none).
    if prepend and bos is not None and tok.convert_ids_to_tokens(bos) == tok.bos_token:
        ids = [bos, *ids]
    if not ids:
        raise AtlasError(f"prompt {prompt!r} has no tokens")
    return ids


def resolve_target(tok: Any, target: str) -> tuple[int, str]:
    """The one token ``target`` names in the tokenizer ``tok``: the next-word form (with a
    leading space) if the tokenizer has one, else the exact vocabulary entry, else its
    single-token encoding."""
    candidates = [] if target.startswith(" ") else [" " + target]
    for text in [*candidates, target]:
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) == 1 and ids[0] != tok.unk_token_id:
            return int(ids[0]), tok.convert_ids_to_tokens(int(ids[0]))
    vocab = tok.get_vocab()
    if target in vocab:
        return int(vocab[target]), target
    raise AtlasError(f"target {target!r} is not one token of this model's vocabulary")


def make_probes(bridge: Any, pairs: list[tuple[str, str]]) -> list[Probe]:
    probes = []
    for prompt, target in pairs:
        target_id, token = resolve_target(bridge.tokenizer, target)
        probes.append(Probe(prompt, target, target_id, token, encode_prompt(bridge, prompt)))
    return probes


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """``prompt<TAB>target`` per line; blank lines and lines starting with # are skipped."""
    pairs = []
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise AtlasError(f"{path}:{number}: expected 'prompt<TAB>target'")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise AtlasError(f"{path} holds no prompt/target pairs")
    return pairs


@torch.inference_mode()
def measure(bridge: Any, probes: list[Probe]) -> list[Reading]:
    """Probability and rank of each probe's target at the prompt's last position (refused for
    a model that does not predict next tokens: its readings would look like results)."""
    if (direction := _attention(bridge)) != "causal":
        raise AtlasError(
            f"measure reads next-token probabilities, which mean nothing for "
            f"{bridge.cfg.model_name!r} (attention is {direction}): measure what its own head "
            "predicts (masked tokens) instead"
        )
    device = next(bridge.parameters()).device
    out = []
    for p in probes:
        logits = bridge(torch.tensor([p.input_ids], device=device), return_type="logits")
        last = logits[0, -1].double()
        probs = torch.softmax(last, dim=-1)
        rank = int((last > last[p.target_id]).sum())
        out.append(Reading(float(probs[p.target_id]), rank, broken_distribution(last)))
    return out


def broken_distribution(logits: torch.Tensor) -> str | None:
    """``"not finite"`` when a logit overflowed, ``"uniform"`` when they are all equal to
    float32 precision (every token as likely: the model no longer tells them apart)."""
    if not bool(torch.isfinite(logits).all()):
        return "not finite"
    spread = float(logits.max() - logits.min())
    if spread <= UNIFORM_SPREAD * max(1.0, float(logits.abs().max())):
        return "uniform"
    return None


UNIFORM_SPREAD = 1e-6  # about float32's resolution, relative to the logits' size
