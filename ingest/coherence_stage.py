"""Ingest stage: coherence scores per direction and per matrix, calibrated against a null.

What is scored: every stored direction's top ``LIST_LENGTH`` positive tokens and its top
negative tokens, separately (information can sit in either valence); ``coherence`` is the better
of the two. A matrix's score (finding E: do a head's top directions jointly form a unit?) is the
score of one pooled list: the first ``HEAD_TOKENS_EACH`` tokens of the better polarity of each
of its ``HEAD_DIRECTIONS`` largest judged directions (15 tokens, the calibrated list length).

The null: ``N_NULL`` random unit residual-space directions of the same model (Gaussian, fixed
seed), projected through the same centered unembedding and scored the same way; null matrices
pool consecutive triples of null directions. Each score gets ``coherence_z`` (standard score
of its log-odds against the null's) and ``coherence_pct`` (percent of null scores at or below
it). The null scores are stored (table ``coherence_null``) so both can be checked from SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from atlas.core.contract import JUDGED_SIDE
from atlas.models.coherence import (
    LIST_LENGTH,
    Scorer,
    features_of_ids,
    judged_string,
    logit,
    percentile,
    score_features,
)
from ingest.assemble import AtlasRows
from ingest.project import TokenScores, project

N_NULL = 1200
NULL_SEED = 0
HEAD_DIRECTIONS = 3
HEAD_TOKENS_EACH = 5


DIRECTION_COLUMNS = ("coherence_pos", "coherence_neg", "coherence", "coherence_z", "coherence_pct")
MATRIX_COLUMNS = ("coherence", "coherence_z", "coherence_pct")


@dataclass
class CoherenceColumns:
    directions: dict[str, np.ndarray]
    matrices: dict[str, np.ndarray]


@dataclass
class _Lists:
    """Scores of the positive and negative lists of some directions, and their token ids."""

    pos: np.ndarray
    neg: np.ndarray
    top_ids: np.ndarray
    bottom_ids: np.ndarray

    @property
    def best(self) -> np.ndarray:
        return np.maximum(self.pos, self.neg)

    def best_ids(self) -> np.ndarray:
        """Each direction's token ids in the polarity that scored higher."""
        return np.where((self.pos >= self.neg)[:, None], self.top_ids, self.bottom_ids)


class _Tables:
    """Per-token-id features, looked up for every id that any list uses (each string once)."""

    def __init__(self, scorer: Scorer, display: list[str], ids: np.ndarray):
        self.used = np.unique(ids)
        self.row_of = np.full(len(display), -1, np.int64)
        self.row_of[self.used] = np.arange(len(self.used))
        self.tables = scorer.tables([judged_string(display[i]) for i in self.used])

    def score(self, ids: np.ndarray) -> np.ndarray:
        return score_features(features_of_ids(self.row_of[ids], *self.tables))


def null_directions(d_model: int, n: int = N_NULL, seed: int = NULL_SEED) -> np.ndarray:
    """``[n, d_model]`` random unit vectors (isotropic: normalized Gaussian samples)."""
    g = np.random.default_rng(seed).standard_normal((n, d_model))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


class CoherenceStage:
    """Scores one ingest's directions block by block against a null computed once.

    ``score(scores, directions)`` gives one block's direction and matrix columns (``scores``
    row i = ``directions`` row i, signs already fixed); ``null`` is the model's null table.
    """

    def __init__(
        self, model_id: str, display: list[str], W_U: torch.Tensor, top_k: int, scorer: Scorer
    ):
        self.display, self.scorer = display, scorer
        self.k = min(LIST_LENGTH, top_k)
        nulls = torch.as_tensor(null_directions(W_U.shape[0]), dtype=W_U.dtype, device=W_U.device)
        null_scores = project(nulls, W_U, self.k)
        null = self._lists(null_scores)
        self.null_best = null.best
        n_triples = N_NULL // HEAD_DIRECTIONS
        null_best_ids = null.best_ids()[: n_triples * HEAD_DIRECTIONS]
        pooled = null_best_ids.reshape(n_triples, HEAD_DIRECTIONS, self.k)[:, :, :HEAD_TOKENS_EACH]
        self.null_head = self._tables(pooled).score(pooled.reshape(n_triples, -1))
        self.null = pa.table(
            {
                "model_id": pa.array([model_id] * (len(self.null_best) + len(self.null_head))),
                "scope": pa.array(
                    ["direction"] * len(self.null_best) + ["matrix"] * len(self.null_head)
                ),
                "sample": np.concatenate(
                    [np.arange(len(self.null_best)), np.arange(len(self.null_head))]
                ),
                "coherence": np.concatenate([self.null_best, self.null_head]),
            }
        )

    def _tables(self, ids: np.ndarray) -> _Tables:
        return _Tables(self.scorer, self.display, ids.ravel())

    def _lists(self, s: TokenScores) -> _Lists:
        top, bottom = s.top_ids[:, : self.k], s.bottom_ids[:, : self.k]
        tables = self._tables(np.concatenate([top.ravel(), bottom.ravel()]))
        return _Lists(tables.score(top), tables.score(bottom), top, bottom)

    def score(self, scores: TokenScores, directions: pa.Table) -> CoherenceColumns:
        real = self._lists(scores)
        direction_cols = {
            "coherence_pos": real.pos,
            "coherence_neg": real.neg,
            "coherence": real.best,
            **_calibrated(real.best, self.null_best),
        }
        matrix_ids, head_lists = _head_lists(directions, real.best_ids())
        used = np.concatenate(head_lists) if head_lists else np.zeros(0, np.int64)
        head = _score_ragged(self._tables(used), head_lists)
        matrix_cols = {
            "matrix_id": matrix_ids,
            "coherence": head,
            **_calibrated(head, self.null_head),
        }
        return CoherenceColumns(direction_cols, matrix_cols)


def attach(rows: AtlasRows, columns: CoherenceColumns | None) -> None:
    """Append one block's coherence columns to ``rows`` (all NULL when nothing was scored)."""
    n_dir, n_mat = rows.directions.num_rows, rows.matrices.num_rows
    for name in DIRECTION_COLUMNS:
        values = columns.directions[name] if columns else np.full(n_dir, np.nan)
        rows.directions = rows.directions.add_column(
            rows.directions.num_columns - 1, name, _nullable(values)
        )
    mat_ids = rows.matrices.column("matrix_id").to_numpy()
    for name in MATRIX_COLUMNS:
        values = np.full(n_mat, np.nan)
        if columns:
            at = np.searchsorted(columns.matrices["matrix_id"], mat_ids)
            values = columns.matrices[name][at]
        rows.matrices = rows.matrices.append_column(name, _nullable(values))


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.float64(), from_pandas=True)  # NaN -> NULL


def _calibrated(values: np.ndarray, null: np.ndarray) -> dict[str, np.ndarray]:
    """z-score (on the log-odds scale, where the sigmoid does not squash the high scores that
    real-word lists all get) and percentile of ``values`` against the null sample."""
    null_logit = logit(null)
    z = (logit(values) - null_logit.mean()) / null_logit.std(ddof=1)
    return {"coherence_z": z, "coherence_pct": percentile(values, np.sort(null))}


def _head_lists(directions: pa.Table, best_ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per matrix: its id and the pooled ids of its largest judged directions."""
    cols = directions.select(["matrix_id", "kind", "side", "sv_index"]).to_pydict()
    judged = np.array(
        [JUDGED_SIDE[kd] == sd for kd, sd in zip(cols["kind"], cols["side"], strict=True)]
    )
    sv = np.asarray(cols["sv_index"])
    matrix = np.asarray(cols["matrix_id"])
    rows = np.flatnonzero(judged & (sv < HEAD_DIRECTIONS))
    rows = rows[np.lexsort((sv[rows], matrix[rows]))]
    matrix_ids, starts = np.unique(matrix[rows], return_index=True)
    groups = np.split(rows, starts[1:])
    return matrix_ids, [best_ids[g, :HEAD_TOKENS_EACH].ravel() for g in groups]


def _score_ragged(tables: _Tables, lists: list[np.ndarray]) -> np.ndarray:
    """Scores of lists that may differ in length (a matrix of rank < HEAD_DIRECTIONS)."""
    out = np.full(len(lists), np.nan)
    lengths = np.array([len(x) for x in lists])
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        if n >= 2:
            out[rows] = tables.score(np.stack([lists[r] for r in rows]))
    return out
