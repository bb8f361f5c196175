"""Reading the matrices the atlas decomposes out of a booted bridge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ModelWeights:
    """The weights of one model, stacked over layers, on the compute device.

    ``W_V`` is ``[L, H, d_model, d_head]`` (grouped-query K/V heads repeated to one per query
    head), ``W_O`` is ``[L, H, d_head, d_model]``; ``mlp`` maps a kind to ``[L, rows, cols]``.
    """

    W_V: torch.Tensor
    W_O: torch.Tensor
    mlp: dict[str, torch.Tensor]
    W_U: torch.Tensor
    skipped: list[str] = field(default_factory=list)


def centered_unembedding(W_U: torch.Tensor) -> torch.Tensor:
    """``W_U`` minus its mean over the vocabulary: scores then measure a direction's affinity to
    a token rather than an offset every token shares."""
    W_U = W_U.float()
    return W_U - W_U.mean(dim=1, keepdim=True)


def expand_kv_heads(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Repeat grouped K/V heads ``[L, n_kv, ...]`` so query head h uses kv head h // group."""
    n_kv = w.shape[1]
    if n_kv == n_heads:
        return w
    return w.repeat_interleave(n_heads // n_kv, dim=1)


@torch.inference_mode()
def extract_weights(bridge: Any, device: str) -> ModelWeights:
    cfg = bridge.cfg
    W_V = expand_kv_heads(bridge.W_V.detach(), cfg.n_heads).to(device, torch.float32)
    W_O = bridge.W_O.detach().to(device, torch.float32)
    mlp: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    if getattr(cfg, "num_experts", None):
        skipped.append("every layer's MLP: mixture-of-experts MLPs are not decomposed")
    elif not getattr(cfg, "attn_only", False):
        mlp["mlp_in"] = bridge.W_in.detach().to(device, torch.float32)
        if getattr(cfg, "gated_mlp", False):
            mlp["mlp_gate"] = bridge.W_gate.detach().to(device, torch.float32)
        mlp["mlp_out"] = bridge.W_out.detach().to(device, torch.float32)
    W_U = centered_unembedding(bridge.W_U.detach().to(device))
    return ModelWeights(W_V=W_V, W_O=W_O, mlp=mlp, W_U=W_U, skipped=skipped)
