"""Convenience views over the contract's tables, so common questions are one short query.

- ``direction_tokens``: one row per direction with its top tokens and scores as lists.
- ``head_summary``: one row per attention head: spectrum statistics and the top write
  direction's tokens of its OV circuit, and the eigenvalue positivity of its OV and QK circuits.
- ``head_composition``: one row per attention head and mode (Q, K, V): the heads that feed it
  (``fed_by``) and the heads it feeds (``feeds``), strongest first, as lists of structs.
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
               w.neg_tokens AS top_write_neg_tokens,
               m.eigen_positivity AS ov_positivity, q.eigen_positivity AS qk_positivity,
               q.sigma_max AS qk_sigma_max
        FROM matrices m
        JOIN direction_tokens w
          ON w.matrix_id = m.matrix_id AND w.side = '{JUDGED_SIDE["ov"]}' AND w.sv_index = 0
        LEFT JOIN matrices q
          ON q.model_id = m.model_id AND q.layer = m.layer AND q.head = m.head AND q.kind = 'qk'
        WHERE m.kind = 'ov'
    """,
    "head_composition": """
        WITH fed_by AS (
            SELECT model_id, dst_layer AS layer, dst_head AS head, mode,
                   list({'layer': src_layer, 'head': src_head, 'score': score,
                          'relative': relative} ORDER BY score DESC) AS fed_by
            FROM composition GROUP BY ALL
        ), feeds AS (
            SELECT model_id, src_layer AS layer, src_head AS head, mode,
                   list({'layer': dst_layer, 'head': dst_head, 'score': score,
                          'relative': relative} ORDER BY score DESC) AS feeds
            FROM composition GROUP BY ALL
        )
        SELECT model_id, layer, head, mode, fed_by, feeds
        FROM fed_by FULL OUTER JOIN feeds USING (model_id, layer, head, mode)
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
