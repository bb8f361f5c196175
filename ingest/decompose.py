"""Stage 2: the SVD of every OV and QK circuit and MLP matrix, batched.

A head's circuits are products of d_head-wide factors: OV = W_V[h] W_O[h] and
QK = W_Q[h] W_K[h]ᵀ (d_model x d_model, rank d_head). Both are decomposed factored, never
formed. Their eigenvalue positivity Σλ / Σ|λ| comes from the d_head x d_head product of the
factors taken the other way round (W_O W_V, W_Kᵀ W_Q), which has the same nonzero eigenvalues
(as ``FactoredMatrix.eigenvalues`` computes them).
"""

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
    value (for statistics and gaps). ``full_rank`` is min(n_rows, n_cols). A head's circuit
    (``ov``, ``qk``) also keeps ``factors``, every triple whatever ``rank`` keeps (composition
    needs them all), and its eigenvalue ``positivity``.
    """

    kind: str
    layers: np.ndarray
    heads: np.ndarray | None
    shape: tuple[int, int]
    svd: BatchSVD
    spectra: np.ndarray
    factors: BatchSVD | None = None
    positivity: np.ndarray | None = None

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
    """Every OV circuit, every MLP matrix of each kind, then every QK circuit, of the layers
    ``weights`` holds (numbered from ``first_layer``: one block of a streamed model, or all of
    them)."""
    n_layers = weights.W_V.shape[0]
    layers = np.arange(first_layer, first_layer + n_layers)
    groups = [_decompose_head("ov", weights.W_V, weights.W_O, ov_method, max_rank, layers)]
    for kind, stacked in weights.mlp.items():
        svd = full_svd(stacked)
        groups.append(_group(kind, layers, None, tuple(stacked.shape[1:]), svd, max_rank))
    # last: the kinds that were there before QK circuits keep their ids
    groups.append(_decompose_head("qk", weights.W_Q, weights.W_K.mT, ov_method, max_rank, layers))
    return groups


def _decompose_head(
    kind: str,
    left: torch.Tensor,
    right: torch.Tensor,
    method: OvMethod,
    max_rank: int | None,
    layers: np.ndarray,
) -> MatrixGroup:
    """The circuits ``left[l, h] @ right[l, h]`` (``[L, H, d_model, d_head]`` and
    ``[L, H, d_head, d_model]``) of every head."""
    n_layers, n_heads, d_model, d_head = left.shape
    left = left.reshape(n_layers * n_heads, d_model, d_head)
    right = right.reshape(n_layers * n_heads, d_head, d_model)
    per_batch = max(1, _OV_BATCH_BYTES // (8 * 3 * d_model * d_head))
    parts = [
        method(left[i : i + per_batch], right[i : i + per_batch])
        for i in range(0, left.shape[0], per_batch)
    ]
    svd = BatchSVD(
        U=torch.cat([p.U for p in parts]),
        S=torch.cat([p.S for p in parts]),
        V=torch.cat([p.V for p in parts]),
    )
    heads = np.tile(np.arange(n_heads), n_layers)
    group = _group(kind, np.repeat(layers, n_heads), heads, (d_model, d_model), svd, max_rank)
    group.factors = svd
    group.positivity = eigenvalue_positivity(left, right)
    return group


def eigenvalue_positivity(left: torch.Tensor, right: torch.Tensor) -> np.ndarray:
    """Σλ / Σ|λ| over the eigenvalues λ of each ``left[b] @ right[b]`` (``[B, n, r]`` and
    ``[B, r, n]``), from the r x r product ``right[b] @ left[b]`` in float64. 1 for a circuit
    whose eigenvalues are all positive (an OV circuit that copies, a QK circuit that matches,
    in Elhage et al. 2021's reading), -1 for all negative; 0 for a zero circuit."""
    small = right.double() @ left.double()
    eig = torch.linalg.eigvals(small)
    total, size = eig.real.sum(-1), eig.abs().sum(-1)
    ratio = torch.where(size > 0, total / size.clamp_min(1e-300), torch.zeros_like(total))
    return ratio.cpu().numpy()


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
