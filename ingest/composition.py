"""Q-, K- and V-composition of every ordered pair of heads, from their singular triples.

Elhage et al. (2021) score how much an earlier head's OV output ``L`` (``W_V W_O``) feeds a
later head's input ``R``: its query side (Q: ``R = W_Q W_Kᵀ``), its key side (K: ``R = W_K
W_Qᵀ``) or its values (V: ``R = W_V W_O``), as ``||L R||_F / (||L||_F ||R||_F)``
(TransformerLens's ``all_composition_scores``). With ``L = Σ σ_i u_i v_iᵀ`` and
``R = Σ τ_j u'_j v'_jᵀ`` (row vectors: ``x @ L``), ``||L R||_F² = Σ_ij (σ_i τ_j (v_i · u'_j))²``:
the score's square splits exactly over pairs of the writer's write directions and the reader's
read directions (query ``u'`` for Q, key ``v'`` for K, OV read ``u'`` for V). This module
computes that sum from each head's d_head singular triples, never a d_model x d_model matrix,
and keeps the ``PAIRS_KEPT`` largest terms of each score.

Streaming: the blocks come in order, so when block ``i`` arrives every earlier head's writer
factors (``σ_i v_i``, d_head x d_model per head) are here, and block ``i``'s heads are scored
as readers against all of them; then block ``i``'s heads join the writers. What is kept is one
d_head x d_model factor per head of the model (the size of all of its ``W_O``), whatever the
number of pairs.

Baseline: for a writer and a reader oriented at random, independently, ``E[(v_i · u'_j)²] =
1/d_model`` for every pair, so ``E[score²] = 1/d_model`` whatever the spectra: the baseline is
``1/sqrt(d_model)``, the root-mean-square score of random matrices of these shapes, and
``relative`` is the score over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from atlas.core.contract import MODES, SIDES_OF
from ingest.assemble import IdBase
from ingest.decompose import MatrixGroup

PAIRS_KEPT = 4  # direction pairs kept per head pair and mode

# The reader's side whose vectors each mode reads through: (kind, side).
READ_SIDE = {"Q": ("qk", "query"), "K": ("qk", "key"), "V": ("ov", "read")}


@dataclass
class _Writers:
    """One layer's heads as writers: ``σ_i v_i`` rows ``[H, d_head, d_model]``."""

    layer: int
    scaled: torch.Tensor
    norms: torch.Tensor  # [H]: ||σ|| = ||W_V W_O||_F
    ids: np.ndarray  # [H, d_head] write direction ids (-1 past the stored rank)


class CompositionStage:
    """Scores each block's heads as readers against every earlier head (see the module)."""

    def __init__(self, model_id: str, d_model: int, pairs_kept: int = PAIRS_KEPT):
        self.model_id, self.pairs_kept = model_id, pairs_kept
        self.baseline = 1.0 / float(np.sqrt(d_model))
        self._writers: list[_Writers] = []

    @torch.inference_mode()
    def add_block(
        self, groups: list[MatrixGroup], bases: list[IdBase]
    ) -> tuple[pa.Table | None, pa.Table | None]:
        """The ``composition`` and ``composition_pairs`` rows whose reader is in this block
        (``groups`` and ``bases`` as ``ingest.assemble.assemble`` takes them); ``None`` for
        the first block, which no head feeds."""
        by_kind = {g.kind: (g, b) for g, b in zip(groups, bases, strict=True)}
        ov, ov_base = by_kind["ov"]
        layer = int(ov.layers[0])
        readers = {
            mode: _scaled(by_kind[kind][0], side, _ids(*by_kind[kind], side))
            for mode, (kind, side) in READ_SIDE.items()
        }
        scores, pairs = [], []
        for w in self._writers:
            for mode in MODES:
                r_scaled, r_norms, r_ids = readers[mode]
                s, p = self._score(w, layer, mode, r_scaled, r_norms, r_ids)
                scores.append(s)
                pairs.append(p)
        self._writers.append(_Writers(layer, *_scaled(ov, "write", _ids(ov, ov_base, "write"))))
        if not scores:
            return None, None
        return pa.concat_tables(scores), pa.concat_tables(pairs)

    def _score(
        self,
        w: _Writers,
        layer: int,
        mode: str,
        r_scaled: torch.Tensor,
        r_norms: torch.Tensor,
        r_ids: np.ndarray,
    ) -> tuple[pa.Table, pa.Table]:
        n_src, d_head = w.scaled.shape[:2]
        n_dst, d_head_r = r_scaled.shape[:2]
        # terms[a, b, i, j] = σ_i τ_j (v_i · u'_j) of writer head a and reader head b
        terms = torch.einsum("aid,bjd->abij", w.scaled, r_scaled)
        squares = terms.square().reshape(n_src, n_dst, d_head * d_head_r)
        norm2 = (w.norms[:, None] * r_norms[None, :]).square()
        # a zero circuit (a pruned head) composes with nothing: score and shares 0, where
        # TransformerLens's ratio is 0/0 (NaN, which sorted above every real score)
        norm2 = torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
        total = squares.sum(-1)
        score = (total / norm2).sqrt()
        k = min(self.pairs_kept, squares.shape[-1])
        top = torch.topk(squares, k, dim=-1)
        share = top.values / norm2[..., None]
        kept = top.values.sum(-1) / total.clamp_min(torch.finfo(total.dtype).tiny)

        src_head = np.repeat(np.arange(n_src), n_dst)
        dst_head = np.tile(np.arange(n_dst), n_src)
        n = n_src * n_dst
        score_np = score.double().cpu().numpy().ravel()
        scores = pa.table(
            {
                "model_id": pa.array([self.model_id] * n),
                "src_layer": np.full(n, w.layer, np.int16),
                "src_head": src_head.astype(np.int16),
                "dst_layer": np.full(n, layer, np.int16),
                "dst_head": dst_head.astype(np.int16),
                "mode": pa.array([mode] * n),
                "score": score_np,
                "baseline": np.full(n, self.baseline),
                "relative": score_np / self.baseline,
                "top_pairs_share": kept.double().cpu().numpy().ravel(),
            }
        )
        flat = top.indices.cpu().numpy().reshape(n, k)
        src_sv, dst_sv = flat // d_head_r, flat % d_head_r
        src_ids = w.ids[np.repeat(src_head, k), src_sv.ravel()]
        dst_ids = r_ids[np.repeat(dst_head, k), dst_sv.ravel()]
        pairs = pa.table(
            {
                "model_id": pa.array([self.model_id] * (n * k)),
                "src_layer": np.full(n * k, w.layer, np.int16),
                "src_head": np.repeat(src_head, k).astype(np.int16),
                "dst_layer": np.full(n * k, layer, np.int16),
                "dst_head": np.repeat(dst_head, k).astype(np.int16),
                "mode": pa.array([mode] * (n * k)),
                "rank": np.tile(np.arange(k, dtype=np.int16), n),
                "src_sv": src_sv.ravel().astype(np.int32),
                "dst_sv": dst_sv.ravel().astype(np.int32),
                "src_direction_id": pa.array(src_ids, mask=src_ids < 0),
                "dst_direction_id": pa.array(dst_ids, mask=dst_ids < 0),
                "contribution": share.double().cpu().numpy().ravel(),
            }
        )
        return scores, pairs


def _scaled(
    g: MatrixGroup, side: str, ids: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A head group's ``side`` vectors scaled by their singular values, ``[H, r, d_model]``,
    the circuits' Frobenius norms ``[H]`` and the vectors' direction ids."""
    assert g.factors is not None
    U_side = SIDES_OF[g.kind].index(side) == 0
    vectors = (g.factors.U if U_side else g.factors.V).mT.float()
    s = g.factors.S.float()
    return vectors * s[..., None], s.norm(dim=-1), ids


def _ids(g: MatrixGroup, base: IdBase, side: str) -> np.ndarray:
    """``[H, r]``: the direction id of each of the group's singular vectors of ``side``, as
    ``assemble`` numbers them; -1 for triples past the stored rank (``max_rank``)."""
    assert g.factors is not None
    n_mat, full = g.factors.S.shape
    rank, sides = g.svd.S.shape[1], SIDES_OF[g.kind]
    sv = np.arange(full)
    ids = base.first_direction_id + (np.arange(n_mat)[:, None] * rank + sv) * len(sides)
    ids = ids + sides.index(side)
    return np.where(sv < rank, ids, -1).astype(np.int64)
