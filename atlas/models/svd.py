"""The linear algebra of the atlas: batched SVDs, the canonical sign rule, spectrum statistics.

Convention (TransformerLens, row vectors): ``x @ M`` with ``M = U diag(S) Vᵀ``. ``U``'s columns
live in M's input space (what it reads), ``V``'s in its output space (what it writes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from atlas.models.rank import numerically_zero


@dataclass
class BatchSVD:
    """Thin SVDs of a batch of matrices: ``M[b] = U[b] @ diag(S[b]) @ V[b].T``.

    ``U`` is ``[B, n_in, r]``, ``S`` is ``[B, r]`` (descending), ``V`` is ``[B, n_out, r]``.
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor


@dataclass
class FactoredSVD:
    """``left @ right = Q1 (R1 R2ᵀ) Q2ᵀ`` with the small core ``R1 R2ᵀ = U' diag(S) V'ᵀ``.

    ``r1``, ``r2``, ``core_u``, ``s`` and ``core_v`` are float64; ``apply_q1`` / ``apply_q2``
    compute ``Q1 @ x`` / ``Q2 @ x`` in the factors' dtype, so ``U = apply_q1(core_u)`` and
    ``V = apply_q2(core_v)``. Editing needs the parts (``query.edit``); ingest needs U, S, V.
    """

    r1: torch.Tensor
    r2: torch.Tensor
    core_u: torch.Tensor
    s: torch.Tensor
    core_v: torch.Tensor
    apply_q1: Callable[[torch.Tensor], torch.Tensor]
    apply_q2: Callable[[torch.Tensor], torch.Tensor]


def factor_svd(left: torch.Tensor, right: torch.Tensor) -> FactoredSVD:
    """The SVD of ``left @ right`` without forming the product.

    ``left`` is ``[B, n, r]`` and ``right`` is ``[B, r, m]`` (an OV circuit: ``W_V`` and
    ``W_O``, ``r = d_head``). With reduced QR factors ``left = Q1 R1`` and ``rightᵀ = Q2 R2`` the
    product is ``Q1 (R1 R2ᵀ) Q2ᵀ``, so only the small core (``r x r`` when ``r <= n, m``, and
    ``min(n, r) x min(m, r)`` for a head wider than the model) needs an SVD; then
    ``U = Q1 U'`` and ``V = Q2 V'``. The triangular factors and the core are computed in
    float64, which keeps close singular values apart at little cost for r x r matrices.
    """
    r1, apply_q1 = _qr_factor(left)
    r2, apply_q2 = _qr_factor(right.mT)
    core_u, s, core_vh = torch.linalg.svd(r1 @ r2.mT, full_matrices=False)
    return FactoredSVD(r1, r2, core_u, s, core_vh.mT, apply_q1, apply_q2)


def factored_svd(left: torch.Tensor, right: torch.Tensor) -> BatchSVD:
    """:func:`factor_svd` assembled into thin SVDs (U and V in the factors' dtype)."""
    f = factor_svd(left, right)
    return BatchSVD(U=f.apply_q1(f.core_u), S=f.s.float(), V=f.apply_q2(f.core_v))


# CholeskyQR is used while the factor's condition number stays below this; beyond it (and for
# rank-deficient factors, e.g. pruned heads) Householder QR takes over.
_CHOLESKY_MAX_CONDITION = 1e5


def _qr_factor(
    a: torch.Tensor,
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``R`` of ``a = Q R`` (float64) and a function computing ``Q @ x`` (in ``a``'s dtype).

    CholeskyQR (``R`` from the Cholesky factor of the small Gram matrix ``aᵀa``, and
    ``Q x = a (R⁻¹ x)``) is several times faster than Householder QR on a batch of tall thin
    matrices and as accurate while ``a`` is well conditioned. Batch elements that are not
    get Householder QR.
    """
    a64 = a.double()
    if a.shape[-2] < a.shape[-1]:  # wider than tall (a head wider than the model): R is k x r
        q, r_wide = torch.linalg.qr(a64)
        return r_wide, lambda x: (q @ x).to(a.dtype)
    chol, info = torch.linalg.cholesky_ex(a64.mT @ a64)
    r = chol.mT
    diag = torch.diagonal(r, dim1=-2, dim2=-1).abs()
    bad = (info != 0) | (diag.amin(-1) * _CHOLESKY_MAX_CONDITION < diag.amax(-1))
    if not bad.any():
        return r, lambda x: a @ torch.linalg.solve_triangular(r, x, upper=True).to(a.dtype)
    q_bad, r[bad] = torch.linalg.qr(a64[bad])
    good = ~bad

    def apply_q(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(a.shape[:-1] + x.shape[-1:], dtype=a.dtype, device=a.device)
        if good.any():
            solved = torch.linalg.solve_triangular(r[good], x[good], upper=True)
            out[good] = a[good] @ solved.to(a.dtype)
        out[bad] = (q_bad @ x[bad]).to(a.dtype)
        return out

    return r, apply_q


def full_svd(matrices: torch.Tensor, rank: int | None = None) -> BatchSVD:
    """Thin SVD of explicit matrices ``[B, n, m]``, keeping the first ``rank`` triples."""
    u, s, vh = torch.linalg.svd(matrices.float(), full_matrices=False)
    if rank is not None:
        u, s, vh = u[..., :rank], s[..., :rank], vh[..., :rank, :]
    return BatchSVD(U=u, S=s, V=vh.mT)


def canonical_signs(top_score: np.ndarray, bottom_score: np.ndarray) -> np.ndarray:
    """The sign (+1/-1) that makes each judged vector's largest-magnitude score positive.

    ``top_score`` and ``bottom_score`` are each vector's largest and smallest vocabulary
    projection score. An SVD fixes ``(u_i, v_i)`` only up to a joint flip; this rule makes the
    stored result independent of the algorithm, the device and the batch order.
    """
    return np.where(-bottom_score > top_score, -1.0, 1.0).astype(np.float32)


@dataclass
class SpectrumStats:
    """Per-matrix statistics of a batch of spectra (each array has one entry per matrix)."""

    sigma_max: np.ndarray
    frobenius_norm: np.ndarray
    stable_rank: np.ndarray
    effective_rank: np.ndarray
    numerical_rank: np.ndarray


def spectrum_stats(spectra: np.ndarray, shape: tuple[int, int]) -> SpectrumStats:
    """Statistics of spectra ``[B, r]`` of matrices of the given shape.

    stable rank = ‖M‖_F² / σ_max²; effective rank = exp(entropy of σ / Σσ) (Roy & Vetterli 2007);
    numerical rank counts σ above ``max(shape) · eps(float32) · σ_max``. A zero matrix (a pruned
    head) has every rank 0 (its entropy's exp would say 1).
    """
    s = np.asarray(spectra, dtype=np.float64)
    sigma_max = s[:, 0]
    frob = np.sqrt((s**2).sum(axis=1))
    safe_max = np.where(sigma_max > 0, sigma_max, 1.0)
    total = s.sum(axis=1, keepdims=True)
    p = s / np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return SpectrumStats(
        sigma_max=sigma_max,
        frobenius_norm=frob,
        stable_rank=frob**2 / safe_max**2,
        effective_rank=np.where(total[:, 0] > 0, np.exp(entropy), 0.0),
        numerical_rank=(~numerically_zero(s, shape)).sum(axis=1),
    )


def relative_gaps(spectra: np.ndarray, full_rank: int) -> np.ndarray:
    """Each singular value's distance to its nearest neighbour, relative to σ_max.

    ``spectra`` is ``[B, r]``; a matrix whose smaller dimension ``full_rank`` exceeds ``r`` has
    further singular values that are zero (an OV circuit beyond d_head), so the last one is
    compared with zero. The ratio to σ_max is what bounds how far a computed singular vector
    can rotate under a perturbation of the matrix (Davis–Kahan / Wedin).
    """
    s = np.asarray(spectra, dtype=np.float64)
    below = np.full_like(s, np.inf)
    above = np.full_like(s, np.inf)
    above[:, 1:] = s[:, :-1] - s[:, 1:]
    below[:, :-1] = s[:, :-1] - s[:, 1:]
    if full_rank > s.shape[1]:
        below[:, -1] = s[:, -1]
    gaps = np.minimum(above, below)
    scale = np.where(s[:, :1] > 0, s[:, :1], 1.0)
    return np.where(np.isfinite(gaps), gaps / scale, 1.0)


def degenerate_groups(spectra: np.ndarray, tolerance: float) -> np.ndarray:
    """For each singular value, the index of the first member of its near-degenerate run.

    Adjacent singular values closer than ``tolerance · σ_max`` belong to one run; only the run's
    span is well defined, not its individual vectors. Values in no run get -1.
    """
    s = np.asarray(spectra, dtype=np.float64)
    scale = np.where(s[:, :1] > 0, s[:, :1], 1.0)
    close = (s[:, :-1] - s[:, 1:]) / scale < tolerance  # close[:, i]: i and i+1 are one run
    groups = np.full(s.shape, -1, dtype=np.int32)
    for b, i in zip(*np.nonzero(close), strict=True):
        start = groups[b, i] if groups[b, i] >= 0 else i
        groups[b, i] = start
        groups[b, i + 1] = start
    return groups
