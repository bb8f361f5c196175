"""The tokenizer-independent token space in which directions of different models meet.

Residual spaces of different models are unrelated, but the words their directions promote are
not. In token space a direction is a sparse unit vector over *normalized* token strings
(``Ġfire``, ``▁Fire`` and ``fire`` are all ``fire``): the sum of its kept top and bottom
tokens' scores per string (bottom scores are negative), scaled to unit length. Cosines in this
space are exact sparse dot products, computed by DuckDB over the ``token_bags`` table: no
hashing, so no collisions, and a GPT-2 head and a BERT head that both write *fire* meet.

A text query is the bag of its words with equal weights.
"""

from __future__ import annotations

# Built at ingest from a store's top_tokens (through W_U: what directions write, or would write,
# into the logits) and vocab tables (ordered by token_norm, so that
# DuckDB's zone maps let a lookup of a few strings skip most of the table).
# Aggregates, a join and a sort, which DuckDB runs out of core within the writer's memory
# limit (a window over every direction's tokens does not: it failed at 1e6 directions).
BUILD_TOKEN_BAGS = """
    INSERT INTO token_bags
    WITH summed AS (
        SELECT t.direction_id, v.token_norm, sum(t.score) AS w
        FROM top_tokens t JOIN vocab v USING (token_id)
        WHERE v.token_norm <> '' AND t.basis = 'unembed'
        GROUP BY t.direction_id, v.token_norm
    ), norms AS (
        SELECT direction_id, sqrt(sum(w * w)) AS norm FROM summed GROUP BY direction_id
    )
    SELECT s.direction_id, s.token_norm, (s.w / n.norm)::FLOAT AS weight
    FROM summed s JOIN norms n USING (direction_id)
    ORDER BY token_norm, direction_id
"""
