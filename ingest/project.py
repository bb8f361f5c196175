"""Stage 3: projecting residual-space directions through the centered unembedding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Scores of one chunk stay under this many bytes, whatever the vocabulary size.
CHUNK_BYTES = 256 * 2**20


@dataclass
class TokenScores:
    """Each vector's k highest (``top``) and k lowest (``bottom``, most negative first) scores."""

    top_ids: np.ndarray
    top_scores: np.ndarray
    bottom_ids: np.ndarray
    bottom_scores: np.ndarray

    def flip(self, rows: np.ndarray) -> None:
        """Negate the vectors at ``rows``: their top and bottom lists swap and change sign."""
        top_ids, top_scores = self.top_ids[rows].copy(), self.top_scores[rows].copy()
        self.top_ids[rows], self.top_scores[rows] = self.bottom_ids[rows], -self.bottom_scores[rows]
        self.bottom_ids[rows], self.bottom_scores[rows] = top_ids, -top_scores


@torch.inference_mode()
def project(
    vectors: torch.Tensor,
    W_U: torch.Tensor,
    k: int,
    on_chunk: Callable[[int], None] | None = None,
) -> TokenScores:
    """Top and bottom ``k`` tokens of every row of ``vectors`` ``[N, d_model]`` under ``W_U``.

    Works in row chunks so the ``N x d_vocab`` score matrix never exists at once.
    """
    n, d_vocab = vectors.shape[0], W_U.shape[1]
    k = min(k, d_vocab)
    rows = max(1, CHUNK_BYTES // (4 * d_vocab))
    out = TokenScores(
        top_ids=np.empty((n, k), np.int32),
        top_scores=np.empty((n, k), np.float32),
        bottom_ids=np.empty((n, k), np.int32),
        bottom_scores=np.empty((n, k), np.float32),
    )
    for start in range(0, n, rows):
        scores = vectors[start : start + rows] @ W_U
        top = torch.topk(scores, k, dim=1)
        bottom = torch.topk(scores, k, dim=1, largest=False)
        stop = start + scores.shape[0]
        out.top_ids[start:stop] = top.indices.cpu().numpy()
        out.top_scores[start:stop] = top.values.cpu().numpy()
        out.bottom_ids[start:stop] = bottom.indices.cpu().numpy()
        out.bottom_scores[start:stop] = bottom.values.cpu().numpy()
        if on_chunk is not None:
            on_chunk(scores.shape[0])
    return out
