"""Stage 2: the SVD of every OV circuit and MLP matrix, batched."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from atlas.models.svd import BatchSVD, factored_svd, full_svd
from ingest.weights import ModelWeights

# Heads per batched QR: bounds float64 working memory at about 256 MB for any model size.
_OV_BATCH_BYTES = 256 * 2**20


@dataclass
class MatrixGroup:
    """Same-kind, same-shape matrices decomposed together.

    ``svd`` keeps the first ``rank`` triples; ``spectra`` holds every nonzero-capable singular
    value (for statistics and gaps). ``full_rank`` is min(n_rows, n_cols).
    """

    kind: str
    layers: np.ndarray
    heads: np.ndarray | None
    shape: tuple[int, int]
    svd: BatchSVD
    spectra: np.ndarray

    @property
    def full_rank(self) -> int:
        return min(self.shape)


OvMethod = Callable[[torch.Tensor, torch.Tensor], BatchSVD]


def ov_factored(W_V: torch.Tensor, W_O: torch.Tensor) -> BatchSVD:
    return factored_svd(W_V, W_O)


def ov_full(W_V: torch.Tensor, W_O: torch.Tensor) -> BatchSVD:
    """The explicit d_model x d_model product's SVD: the baseline, and the tests' oracle."""
    return full_svd(W_V @ W_O, rank=W_V.shape[-1])


@torch.inference_mode()
def decompose(
    weights: ModelWeights,
    max_rank: int | None = None,
    ov_method: OvMethod = ov_factored,
    first_layer: int = 0,
) -> list[MatrixGroup]:
    """Every OV circuit, then every MLP matrix of each kind, of the layers ``weights`` holds
    (numbered from ``first_layer``: one block of a streamed model, or all of them)."""
    n_layers = weights.W_V.shape[0]
    layers = np.arange(first_layer, first_layer + n_layers)
    groups = [_decompose_ov(weights, ov_method, max_rank, layers)]
    for kind, stacked in weights.mlp.items():
        svd = full_svd(stacked)
        groups.append(_group(kind, layers, None, tuple(stacked.shape[1:]), svd, max_rank))
    return groups


def _decompose_ov(
    weights: ModelWeights, method: OvMethod, max_rank: int | None, layers: np.ndarray
) -> MatrixGroup:
    n_layers, n_heads, d_model, d_head = weights.W_V.shape
    W_V = weights.W_V.reshape(n_layers * n_heads, d_model, d_head)
    W_O = weights.W_O.reshape(n_layers * n_heads, d_head, d_model)
    per_batch = max(1, _OV_BATCH_BYTES // (8 * 3 * d_model * d_head))
    parts = [
        method(W_V[i : i + per_batch], W_O[i : i + per_batch])
        for i in range(0, W_V.shape[0], per_batch)
    ]
    svd = BatchSVD(
        U=torch.cat([p.U for p in parts]),
        S=torch.cat([p.S for p in parts]),
        V=torch.cat([p.V for p in parts]),
    )
    heads = np.tile(np.arange(n_heads), n_layers)
    return _group("ov", np.repeat(layers, n_heads), heads, (d_model, d_model), svd, max_rank)


def _group(
    kind: str,
    layers: np.ndarray,
    heads: np.ndarray | None,
    shape: tuple[int, ...],
    svd: BatchSVD,
    max_rank: int | None,
) -> MatrixGroup:
    spectra = svd.S.double().cpu().numpy()
    if max_rank is not None and max_rank < svd.S.shape[1]:
        svd = BatchSVD(U=svd.U[..., :max_rank], S=svd.S[:, :max_rank], V=svd.V[..., :max_rank])
    return MatrixGroup(kind, layers, heads, (shape[0], shape[1]), svd, spectra)
