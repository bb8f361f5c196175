"""Reading the matrices the atlas decomposes out of a booted bridge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ModelWeights:
    """The weights of one model, stacked over layers, on the compute device.

    ``W_Q``, ``W_K`` and ``W_V`` are ``[L, H, d_model, d_head]`` (grouped-query K/V heads
    repeated to one per query head, so query head h is paired with its shared key head),
    ``W_O`` is ``[L, H, d_head, d_model]``; ``mlp`` maps a kind to ``[L, rows, cols]``.
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
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
    W_Q = bridge.W_Q.detach().to(device, torch.float32)
    W_K = expand_kv_heads(bridge.W_K.detach(), cfg.n_heads).to(device, torch.float32)
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
    return ModelWeights(W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=W_O, mlp=mlp, W_U=W_U, skipped=skipped)


def block_slice(w: ModelWeights, i: int) -> ModelWeights:
    """Layer ``i`` of ``w`` alone."""
    one = slice(i, i + 1)
    mlp = {kind: m[one] for kind, m in w.mlp.items()}
    return ModelWeights(w.W_Q[one], w.W_K[one], w.W_V[one], w.W_O[one], mlp, w.W_U, w.skipped)


def on_device(w: ModelWeights, device: str) -> ModelWeights:
    """``w``'s block matrices on ``device`` (the unembedding stays where it is)."""
    mlp = {k: m.to(device) for k, m in w.mlp.items()}
    return ModelWeights(
        w.W_Q.to(device), w.W_K.to(device), w.W_V.to(device), w.W_O.to(device), mlp, w.W_U,
        w.skipped,
    )  # fmt: skip
