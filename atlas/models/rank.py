"""Which singular values are zero to float32 precision (numpy only: read by query commands
that must not import torch, and by ingest)."""

from __future__ import annotations

import numpy as np


def numerically_zero(spectra: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which singular values of ``spectra`` (``[B, r]``) are zero to float32 precision: at most
    ``max(shape) · eps(float32) · σ_max`` (LAPACK's rank tolerance). Their vectors are set by
    rounding, not by the matrix (a LayerNorm fold's null direction, a pruned head's)."""
    s = np.asarray(spectra, dtype=np.float64)
    tol = max(shape) * np.finfo(np.float32).eps * s[:, :1]
    return s <= tol
