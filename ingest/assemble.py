"""From decompositions and projections to the rows of the storage contract.

This is where the canonical sign rule is applied: each singular triple's judged vector (``v``
for ``ov``, ``qk`` (its key side) and ``mlp_out``, ``u`` for ``mlp_in``/``mlp_gate``) is
flipped, together with its partner, so that its largest-magnitude vocabulary score is
positive.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch

from atlas.core.contract import EMBED_SIDES, JUDGED_SIDE, NEURON_SIDE, SIDES_OF, U_SIDES
from atlas.models.rank import numerically_zero
from atlas.models.svd import canonical_signs, degenerate_groups, relative_gaps, spectrum_stats
from ingest.decompose import MatrixGroup
from ingest.project import TokenScores, project


def side_vectors(group: MatrixGroup, side: str) -> torch.Tensor:
    """``[B, r, n]`` singular vectors of one side (``read``/``query`` = U's columns,
    ``write``/``key`` = V's)."""
    return (group.svd.U if side in U_SIDES else group.svd.V).mT


def residual_vectors(groups: list[MatrixGroup]) -> torch.Tensor:
    """Every residual-space direction as a row, in storage order: group, matrix, sv, side."""
    blocks = []
    for g in groups:
        stacked = torch.stack([side_vectors(g, s) for s in SIDES_OF[g.kind]], dim=2)
        blocks.append(stacked.reshape(-1, stacked.shape[-1]))
    return torch.cat(blocks)


@dataclass
class IdBase:
    first_matrix_id: int
    first_direction_id: int


@dataclass
class AtlasRows:
    """Arrow tables ready to write, and the direction vectors for the FAISS index."""

    matrices: pa.Table
    directions: pa.Table
    top_tokens: pa.Table
    top_neurons: pa.Table
    vectors: np.ndarray
    direction_ids: np.ndarray
    composition: pa.Table | None = None  # set by the composition stage
    composition_pairs: pa.Table | None = None


def assemble(
    model_id: str,
    groups: list[MatrixGroup],
    vectors: torch.Tensor,
    scores: TokenScores,
    vocabulary: pa.Array,
    display: pa.Array,
    bases: list[IdBase],
    gap_tolerance: float,
    top_k: int,
) -> AtlasRows:
    """Apply the sign rule (mutating ``scores``) and build the tables of ``groups`` (a model, or
    one block of it); group i's matrix and direction ids start at ``bases[i]``."""
    vecs = vectors.cpu().numpy()
    matrices, directions, neurons, direction_ids = [], [], [], []
    row = 0
    for g, ids in zip(groups, bases, strict=True):
        n_mat, rank = g.svd.S.shape
        sides = SIDES_OF[g.kind]
        n_rows = n_mat * rank * len(sides)
        block = np.arange(row, row + n_rows).reshape(n_mat, rank, len(sides))
        judged = block[:, :, sides.index(JUDGED_SIDE[g.kind])]
        sign = canonical_signs(scores.top_scores[judged, 0], scores.bottom_scores[judged, 0])
        flipped = block[sign < 0].ravel()
        scores.flip(flipped)
        vecs[flipped] *= -1

        matrix_ids = np.arange(ids.first_matrix_id, ids.first_matrix_id + n_mat)
        first_id = ids.first_direction_id - row  # the group's ids, whatever its rows' positions
        matrices.append(_matrix_table(model_id, g, matrix_ids))
        directions.append(_direction_table(model_id, g, matrix_ids, block, first_id, gap_tolerance))
        if g.kind in NEURON_SIDE:
            partner = side_vectors(g, NEURON_SIDE[g.kind]) * torch.as_tensor(
                sign, device=g.svd.S.device
            ).unsqueeze(-1)
            neurons.append(_neuron_table(partner, block[:, :, 0] + first_id, top_k))
        direction_ids.append(block.ravel() + first_id)
        row += n_rows

    direction_ids_all = np.concatenate(direction_ids)
    dir_table = pa.concat_tables(directions)
    dir_table = dir_table.append_column(
        "vector", pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), vecs.shape[1])
    )
    return AtlasRows(
        matrices=pa.concat_tables(matrices),
        directions=dir_table,
        top_tokens=_token_table(direction_ids_all, scores, vocabulary, display),
        top_neurons=pa.concat_tables(neurons) if neurons else _empty_neurons(),
        vectors=vecs,
        direction_ids=direction_ids_all,
    )


def _matrix_table(model_id: str, g: MatrixGroup, matrix_ids: np.ndarray) -> pa.Table:
    stats = spectrum_stats(g.spectra, g.shape)
    n = len(matrix_ids)
    return pa.table(
        {
            "matrix_id": matrix_ids,
            "model_id": pa.array([model_id] * n),
            "layer": g.layers.astype(np.int16),
            "head": pa.array(
                g.heads.astype(np.int16) if g.heads is not None else [None] * n, type=pa.int16()
            ),
            "kind": pa.array([g.kind] * n),
            "n_rows": np.full(n, g.shape[0], np.int32),
            "n_cols": np.full(n, g.shape[1], np.int32),
            "rank": np.full(n, g.svd.S.shape[1], np.int32),
            "numerical_rank": stats.numerical_rank.astype(np.int32),
            "sigma_max": stats.sigma_max,
            "frobenius_norm": stats.frobenius_norm,
            "stable_rank": stats.stable_rank,
            "effective_rank": stats.effective_rank,
            "spectrum": pa.array(list(g.spectra.astype(np.float32)), type=pa.list_(pa.float32())),
            "eigen_positivity": pa.array(
                g.positivity if g.positivity is not None else [None] * n, type=pa.float64()
            ),
        }
    )


def _direction_table(
    model_id: str,
    g: MatrixGroup,
    matrix_ids: np.ndarray,
    block: np.ndarray,
    first_direction_id: int,
    gap_tolerance: float,
) -> pa.Table:
    n_mat, rank, n_sides = block.shape
    gaps = relative_gaps(g.spectra, g.full_rank)[:, :rank]
    groups = degenerate_groups(g.spectra, gap_tolerance)[:, :rank]
    # a numerically zero singular value's vectors are set by rounding: one group, from the
    # first of them, however far apart they are
    null = numerically_zero(g.spectra, g.shape)
    first_null = np.where(null.any(axis=1), null.argmax(axis=1), -1)[:, None]
    null = null[:, :rank]
    degenerate = (gaps < gap_tolerance) | null
    groups = np.where(null, first_null, groups)
    sv_index = np.broadcast_to(np.arange(rank), (n_mat, rank))
    groups = np.where(degenerate & (groups < 0), sv_index, groups)

    def per_row(values: np.ndarray) -> np.ndarray:  # [n_mat, rank] -> one per stored row
        return np.repeat(np.asarray(values)[:, :rank].reshape(-1), n_sides)

    heads = (
        pa.array(np.repeat(g.heads, rank * n_sides).astype(np.int16))
        if g.heads is not None
        else pa.nulls(block.size, pa.int16())
    )
    return pa.table(
        {
            "direction_id": block.ravel() + first_direction_id,
            "matrix_id": np.repeat(matrix_ids, rank * n_sides),
            "model_id": pa.array([model_id] * block.size),
            "layer": np.repeat(g.layers, rank * n_sides).astype(np.int16),
            "head": heads,
            "kind": pa.array([g.kind] * block.size),
            "sv_index": per_row(sv_index).astype(np.int32),
            "sigma": per_row(g.svd.S.double().cpu().numpy()),
            "side": pa.array(np.tile(SIDES_OF[g.kind], n_mat * rank)),
            "sv_gap": per_row(gaps),
            "degenerate": per_row(degenerate),
            "degenerate_group": pa.array(
                per_row(groups).astype(np.int32), mask=~per_row(degenerate)
            ),
        }
    )


def embedding_readout(
    rows: AtlasRows,
    W_E: torch.Tensor,
    k: int,
    vocabulary: pa.Array,
    display: pa.Array,
    tied: TokenScores | None = None,
) -> pa.Table:
    """``top_tokens`` rows of basis ``embed`` for the read sides of ``rows`` (``read``,
    ``query``, ``key``): their top and bottom ``k`` tokens through the centered embedding
    ``W_E`` ``[d_model, d_vocab]``, which input tokens they read (Dar et al. 2022). Scored after
    the sign rule, on the stored vectors. ``tied``: the rows' scores through W_U (signs applied),
    given when W_E is W_U, so that they are not computed twice."""
    reads = np.isin(rows.directions["side"].to_numpy(zero_copy_only=False), EMBED_SIDES)
    if tied is not None:
        scores = TokenScores(*(getattr(tied, f.name)[reads] for f in fields(TokenScores)))
    else:
        vectors = torch.from_numpy(rows.vectors[reads]).to(W_E.device, W_E.dtype)
        scores = project(vectors, W_E, k)
    return _token_table(rows.direction_ids[reads], scores, vocabulary, display, "embed")


def _token_table(
    direction_ids: np.ndarray,
    scores: TokenScores,
    vocabulary: pa.Array,
    display: pa.Array,
    basis: str = "unembed",
) -> pa.Table:
    n, k = scores.top_ids.shape
    token_ids = np.concatenate([scores.top_ids, scores.bottom_ids], axis=1).ravel()
    values = np.concatenate([scores.top_scores, scores.bottom_scores], axis=1).ravel()
    polarity = np.tile(np.repeat(np.array(["pos", "neg"]), k), n)
    return pa.table(
        {
            "direction_id": np.repeat(direction_ids, 2 * k),
            "basis": pa.array([basis] * (2 * k * n), pa.string()),
            "polarity": pa.array(polarity),
            "rank": np.tile(np.arange(k, dtype=np.int16), 2 * n),
            "token_id": token_ids.astype(np.int32),
            "token": vocabulary.take(token_ids),
            "token_display": display.take(token_ids),
            "score": values.astype(np.float32),
        }
    )


def _neuron_table(partner: torch.Tensor, direction_ids: np.ndarray, k: int) -> pa.Table:
    flat = partner.reshape(-1, partner.shape[-1])
    k = min(k, flat.shape[1])
    top = torch.topk(flat.abs(), k, dim=1).indices
    weights = torch.gather(flat, 1, top)
    n = flat.shape[0]
    return pa.table(
        {
            "direction_id": np.repeat(direction_ids.ravel(), k),
            "rank": np.tile(np.arange(k, dtype=np.int16), n),
            "neuron": top.cpu().numpy().ravel().astype(np.int32),
            "weight": weights.cpu().numpy().ravel().astype(np.float32),
        }
    )


def _empty_neurons() -> pa.Table:
    return pa.table(
        {
            "direction_id": pa.array([], pa.int64()),
            "rank": pa.array([], pa.int16()),
            "neuron": pa.array([], pa.int32()),
            "weight": pa.array([], pa.float32()),
        }
    )
