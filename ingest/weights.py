"""Reading the matrices the atlas decomposes out of a booted bridge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from atlas.core.errors import AtlasError


@dataclass
class ModelWeights:
    """The weights of one model, stacked over layers, on the compute device.

    ``W_Q``, ``W_K`` and ``W_V`` are ``[L, H, d_model, d_head]`` (grouped-query K/V heads
    repeated to one per query head, so query head h is paired with its shared key head),
    ``W_O`` is ``[L, H, d_head, d_model]``; ``mlp`` maps a kind to ``[L, rows, cols]``.
    ``W_U`` and ``W_E`` are the centered unembedding and embedding, both ``[d_model, d_vocab]``
    (``W_E`` transposed), so that ``vectors @ W`` scores tokens either way.
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    mlp: dict[str, torch.Tensor]
    W_U: torch.Tensor
    W_E: torch.Tensor
    skipped: list[str] = field(default_factory=list)


# TransformerLens's names of the MLP matrices, for messages
MLP_NAMES = {"mlp_in": "W_in", "mlp_gate": "W_gate", "mlp_out": "W_out"}


def require_finite(matrices: dict[str, torch.Tensor], where: str) -> None:
    """An :class:`AtlasError` naming the first of ``matrices`` that holds inf or NaN: the SVD
    of an infinite matrix is garbage (stored as such once), of a NaN one a LAPACK failure."""
    for name, m in matrices.items():
        if not bool(torch.isfinite(m).all()):
            raise AtlasError(
                f"{where} {name} holds non-finite values (inf or NaN): its SVD would be "
                "meaningless, so the model is not ingested"
            )


def require_finite_block(w: ModelWeights, layer: int) -> None:
    """:func:`require_finite` over a block's matrices."""
    named = {"W_Q": w.W_Q, "W_K": w.W_K, "W_V": w.W_V, "W_O": w.W_O}
    named |= {MLP_NAMES[kind]: m for kind, m in w.mlp.items()}
    require_finite(named, f"layer {layer}'s")


def centered_unembedding(W_U: torch.Tensor) -> torch.Tensor:
    """``W_U`` (``[d_model, d_vocab]``; ``W_E`` transposed alike) minus its mean over the
    vocabulary: scores then measure a direction's affinity to a token rather than an offset
    every token shares. A tied model's two are then equal."""
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
    W_E = centered_unembedding(bridge.W_E.detach().to(device).T)
    return ModelWeights(W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=W_O, mlp=mlp, W_U=W_U, W_E=W_E,
                        skipped=skipped)  # fmt: skip


def block_slice(w: ModelWeights, i: int) -> ModelWeights:
    """Layer ``i`` of ``w`` alone."""
    one = slice(i, i + 1)
    mlp = {kind: m[one] for kind, m in w.mlp.items()}
    return ModelWeights(
        w.W_Q[one], w.W_K[one], w.W_V[one], w.W_O[one], mlp, w.W_U, w.W_E, w.skipped
    )


def on_device(w: ModelWeights, device: str) -> ModelWeights:
    """``w``'s block matrices on ``device`` (the unembedding and embedding stay where they
    are)."""
    mlp = {k: m.to(device) for k, m in w.mlp.items()}
    return ModelWeights(
        w.W_Q.to(device), w.W_K.to(device), w.W_V.to(device), w.W_O.to(device), mlp, w.W_U,
        w.W_E, w.skipped,
    )  # fmt: skip
