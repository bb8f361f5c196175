"""Convenience views over the contract's tables, so common questions are one short query.

- ``direction_tokens``: one row per direction with its top tokens and scores as lists.
- ``head_summary``: one row per attention head: spectrum statistics and the top write
  direction's tokens.
- ``layer_norms``: one row per model, kind and layer: the largest spectral norm and the
  combined Frobenius norm of the layer's matrices.
"""

from __future__ import annotations

import duckdb

from atlas.core.contract import JUDGED_SIDE


def direction_tokens_sql(
    directions: str = "directions", top_tokens: str = "top_tokens", where: str = "TRUE"
) -> str:
    """The ``direction_tokens`` view's query, over the given relations and rows of
    ``directions``: one model's own tables, where a question is about one model, read that
    model's store alone, while the view spans every store of the atlas."""
    return f"""
        SELECT d.direction_id, d.matrix_id, d.model_id, d.layer, d.head, d.kind, d.side,
               d.sv_index, d.sigma, d.degenerate,
               list(t.token_display ORDER BY t.rank) FILTER (WHERE t.polarity = 'pos')
                   AS pos_tokens,
               list(t.token_display ORDER BY t.rank) FILTER (WHERE t.polarity = 'neg')
                   AS neg_tokens,
               list(t.score ORDER BY t.rank) FILTER (WHERE t.polarity = 'pos') AS pos_scores,
               list(t.score ORDER BY t.rank) FILTER (WHERE t.polarity = 'neg') AS neg_scores
        FROM {directions} d JOIN {top_tokens} t USING (direction_id)
        WHERE {where}
        GROUP BY d.direction_id, d.matrix_id, d.model_id, d.layer, d.head, d.kind, d.side,
                 d.sv_index, d.sigma, d.degenerate
    """


VIEWS = {
    "direction_tokens": direction_tokens_sql(),
    "head_summary": f"""
        SELECT m.model_id, m.layer, m.head, m.matrix_id, m.sigma_max, m.frobenius_norm,
               m.stable_rank, m.effective_rank, m.numerical_rank,
               w.direction_id AS top_write_id, w.pos_tokens AS top_write_tokens,
               w.neg_tokens AS top_write_neg_tokens
        FROM matrices m
        JOIN direction_tokens w
          ON w.matrix_id = m.matrix_id AND w.side = '{JUDGED_SIDE["ov"]}' AND w.sv_index = 0
        WHERE m.kind = 'ov'
    """,
    "layer_norms": """
        SELECT model_id, kind, layer, max(sigma_max) AS sigma_max,
               sqrt(sum(frobenius_norm * frobenius_norm)) AS frobenius_norm,
               count(*) AS n_matrices
        FROM matrices GROUP BY model_id, kind, layer
    """,
}


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name, body in VIEWS.items():
        con.execute(f"CREATE VIEW {name} AS {body}")
