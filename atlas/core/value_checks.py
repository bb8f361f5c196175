"""The values a model's rows must hold, whatever its checksums say.

A checksum says a file is the one its manifest describes; a hostile bundle or an edited store
recomputes it. These checks look at the values themselves:

- no NULL where a reader needs a value (a direction's ids, layer, kind, side, sv_index and
  sigma, a head for a head's matrix only; a top token's rank, id and score);
- the model's shape (its ``models`` row) positive, and every direction's layer and head within
  it: readers take a model's layers and heads from there (a card refuses a layer past it);
- ``sigma`` finite, non-negative and non-increasing with ``sv_index`` within a matrix's side;
- direction vectors without NULLs, finite and of unit norm, and one for every direction or
  for none (all of them, or a sample where reading every vector is the expensive part, as
  when a Parquet tree is opened);
- top-token scores finite, in rank order (of all directions, or a sample with the vectors),
  and, on a sample of directions, equal to the
  direction's vector read through the model's centered unembedding (where both are here).

Each problem is one line naming the model, the direction (its matrix, side and sv_index) and
what is wrong. The relations are any SQL a ``run(query, params)`` callable can read: a store's
tables, a Parquet tree's views, or a bundle's tables registered in DuckDB.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from atlas.core.contract import HEAD_KINDS
from atlas.core.vectors import numbers, vector_matrix

Run = Callable[[str, list[Any] | None], pa.Table]
UNIT_TOLERANCE = 1e-3  # float32 vectors, or float16 ones renormalised on load
SIGMA_RTOL = 1e-6  # a singular value may not exceed the one before it by more
# |stored score - recomputed score| per unit of the token's unembedding norm: the unembedding
# is kept in float16, which moves a score by about 5e-5 of it (measured on MiniLM).
SCORE_TOLERANCE = 1e-3
SAMPLE = 64  # directions whose top-token scores (and, when sampling, vectors) are recomputed

_WHERE = "layer, head, kind, side, sv_index"


def where(row: dict[str, Any]) -> str:
    """``direction 432 (layer 0 head 6 ov read sv 24)``."""
    head = f" head {row['head']}" if row.get("head") is not None else ""
    return (
        f"direction {row['direction_id']} (layer {row['layer']}{head} {row['kind']} "
        f"{row['side']} sv {row['sv_index']})"
    )


def value_problems(
    run: Run,
    model_id: str,
    models: str,
    directions: str,
    top_tokens: str,
    unembed: np.ndarray | None,
    vectors: str = "all",
) -> list[str]:
    """Every kind of bad value the model's rows hold (the first case of each), as lines.
    ``models``, ``directions`` and ``top_tokens`` are the model's relations.

    ``vectors``: check the norms of ``all`` vectors, a ``sample`` (and then the top-token order
    of a sample too) or ``none`` (the caller checks them itself)."""
    found = [
        _null_problem(run, directions, top_tokens)
        or _shape_problem(run, models, directions, top_tokens, unembed)
    ]
    if found[0]:  # the other checks read these values
        return [f"model {model_id!r}: {found[0]}"]
    found.append(_sigma_problem(run, directions))
    if vectors != "none":
        found.append(_vector_problem(run, directions, vectors == "all"))
    found.append(_score_order_problem(run, directions, top_tokens, vectors != "sample"))
    if unembed is not None and not any(found):
        found.append(_score_problem(run, directions, top_tokens, unembed))
    return [f"model {model_id!r}: {p}" for p in found if p]


def _first(run: Run, query: str, params: list[Any] | None = None) -> dict[str, Any] | None:
    rows = run(query, params).to_pylist()
    return rows[0] if rows else None


# the columns that hold a value in every row (head: in every row of a head's matrix only)
_REQUIRED = {
    "directions": ("direction_id", "matrix_id", "layer", "kind", "side", "sv_index", "sigma"),
    "top_tokens": ("direction_id", "basis", "polarity", "rank", "token_id", "score"),
}


def _null_problem(run: Run, directions: str, top_tokens: str) -> str | None:
    """The first NULL where the readers need a value (they would fail on it, or show it)."""
    for table, relation in (("directions", directions), ("top_tokens", top_tokens)):
        columns = _REQUIRED[table]
        missing = " ".join(f"WHEN {c} IS NULL THEN '{c}'" for c in columns)
        wrong = " OR ".join(f"{c} IS NULL" for c in columns)
        if table == "directions":
            heads = f"(head IS NULL) = (kind IN {HEAD_KINDS})"
            missing += f" WHEN {heads} THEN 'head'"
            wrong += f" OR {heads}"
        row = _first(
            run,
            f"SELECT direction_id, CASE {missing} END AS missing FROM {relation} "
            f"WHERE {wrong} LIMIT 1",
        )
        if row is not None and row["missing"] == "head":
            return (
                f"direction {row['direction_id']}: its head does not fit its kind (NULL for "
                "a head's matrix, or set for an MLP's)"
            )
        if row is not None and row["direction_id"] is None:
            return f"a row of {table} has no direction_id (NULL)"
        if row is not None:
            return f"direction {row['direction_id']}: {table}.{row['missing']} is NULL"
    return None


# the counts of a model's shape, at least 1 each (``n_heads``: an attention-free model has none)
_SHAPE = {"n_layers": 1, "n_heads": 0, "d_head": 1, "d_vocab": 1, "top_k": 1}


def _shape_problem(
    run: Run, models: str, directions: str, top_tokens: str, unembed: np.ndarray | None
) -> str | None:
    """The ``models`` row's shape: integer counts, every direction's layer and head within
    them and the last of each there, top_k the ranks stored, d_vocab the unembedding's rows."""
    rows = run(f"SELECT {', '.join(_SHAPE)} FROM {models}", None).to_pylist()
    if len(rows) != 1:
        return f"models has {len(rows)} rows, not one"
    shape = rows[0]
    for column, least in _SHAPE.items():
        value = shape[column]
        if value is None:
            return f"models.{column} is NULL"
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            return f"models.{column} is {value!r}, not a count of at least {least}"
    n_layers, n_heads = shape["n_layers"], shape["n_heads"]
    row = _first(
        run,
        f"SELECT direction_id, {_WHERE} FROM {directions} "
        "WHERE layer NOT BETWEEN 0 AND ? - 1 OR head NOT BETWEEN 0 AND ? - 1 "
        "ORDER BY direction_id LIMIT 1",
        [n_layers, n_heads],
    )
    if row is not None:
        return (
            f"{where(row)}: outside the model's {n_layers} layers of {n_heads} heads "
            "(models.n_layers, n_heads)"
        )
    last = _first(run, f"SELECT max(layer) AS layer, max(head) AS head FROM {directions}", None)
    if last is not None and last["layer"] is not None and last["layer"] != n_layers - 1:
        return f"models.n_layers is {n_layers}, but the directions' layers end at {last['layer']}"
    if last is not None and last["head"] is not None and last["head"] != n_heads - 1:
        return f"models.n_heads is {n_heads}, but the directions' heads end at {last['head']}"
    ranks = _first(
        run, f"SELECT max(rank) + 1 AS n FROM {top_tokens} WHERE basis = 'unembed'", None
    )
    listed = min(shape["top_k"], shape["d_vocab"])
    if ranks is not None and ranks["n"] is not None and ranks["n"] != listed:
        return (
            f"models.top_k is {shape['top_k']} (of {shape['d_vocab']} tokens), but each "
            f"direction lists {ranks['n']} top tokens"
        )
    if unembed is not None and len(unembed) != shape["d_vocab"]:
        return f"models.d_vocab is {shape['d_vocab']}, but the unembedding has {len(unembed)} rows"
    return None


def _sigma_problem(run: Run, directions: str) -> str | None:
    row = _first(
        run,
        f"""
        SELECT direction_id, {_WHERE}, sigma,
               lag(sigma) OVER (PARTITION BY matrix_id, side ORDER BY sv_index) AS previous
        FROM {directions}
        QUALIFY NOT isfinite(sigma) OR sigma < 0
                OR sigma > previous * (1 + {SIGMA_RTOL}) + 1e-12
        ORDER BY direction_id LIMIT 1
        """,
    )
    if row is None:
        return None
    sigma = row["sigma"]
    if not np.isfinite(sigma):
        return f"{where(row)}: sigma is {sigma}, not a finite number"
    if sigma < 0:
        return f"{where(row)}: sigma is {sigma:.6g}, negative"
    return (
        f"{where(row)}: sigma {sigma:.6g} is larger than sigma {row['previous']:.6g} of the "
        "sv_index before it (singular values do not increase)"
    )


def _vector_problem(run: Run, directions: str, all_vectors: bool) -> str | None:
    if all_vectors:  # a vector for every direction or for none (reads every vector)
        row = _first(
            run,
            f"SELECT min(direction_id) FILTER (WHERE vector IS NULL) AS direction_id "
            f"FROM {directions} HAVING count(vector) > 0 AND count(vector) < count(*)",
        )
        if row is not None:
            return (
                f"direction {row['direction_id']}: its vector is NULL, other directions have theirs"
            )
    sample = "" if all_vectors else f"USING SAMPLE reservoir({SAMPLE} ROWS)"
    row = _first(
        run,
        f"""
        SELECT direction_id, {_WHERE}, norm, holed FROM (
            SELECT direction_id, {_WHERE},
                   list_count(vector) < len(vector) AS holed,  -- a NULL among its values
                   CASE WHEN NOT holed
                        THEN sqrt(list_dot_product(vector::DOUBLE[], vector::DOUBLE[])) END
                   AS norm
            FROM (SELECT * FROM {directions} WHERE vector IS NOT NULL {sample})
        )
        WHERE norm IS NULL OR NOT isfinite(norm) OR abs(norm - 1) > {UNIT_TOLERANCE}
              OR holed
        ORDER BY direction_id LIMIT 1
        """,
    )
    if row is None:
        return None
    norm = row["norm"]
    if row["holed"]:
        return f"{where(row)}: its vector holds NULL values"
    if norm is None or not np.isfinite(norm):
        return f"{where(row)}: its vector holds NaN or infinite values"
    return f"{where(row)}: its vector has norm {norm:.6g}, not unit length"


def _score_order_problem(run: Run, directions: str, top_tokens: str, every: bool) -> str | None:
    """Scores finite and in rank order: of ``every`` direction, or of a sample (where reading
    every row is the expensive part)."""
    among = (
        ""
        if every
        else f"WHERE direction_id IN (SELECT direction_id FROM {directions} "
        f"USING SAMPLE reservoir({SAMPLE} ROWS))"
    )
    row = _first(
        run,
        f"""
        SELECT d.direction_id, {", ".join(f"d.{c}" for c in _WHERE.split(", "))},
               t.polarity, t.rank, t.score FROM (
            SELECT direction_id, polarity, rank, score,
                   lag(score) OVER (PARTITION BY direction_id, basis, polarity ORDER BY rank)
                   AS previous
            FROM {top_tokens} {among}
            QUALIFY score IS NULL OR NOT isfinite(score)
                    OR (polarity = 'pos' AND score > previous)
                    OR (polarity = 'neg' AND score < previous)
        ) t JOIN {directions} d USING (direction_id)
        ORDER BY d.direction_id LIMIT 1
        """,
    )
    if row is None:
        return None
    if row["score"] is None or not np.isfinite(row["score"]):
        return (
            f"{where(row)}: top_tokens score of {row['polarity']} rank {row['rank']} is not finite"
        )
    return f"{where(row)}: its {row['polarity']} top_tokens scores are out of rank order"


def _score_problem(run: Run, directions: str, top_tokens: str, unembed: np.ndarray) -> str | None:
    """A sample of directions: each stored score against the vector read through the
    unembedding (``ingest.project`` computes them so)."""
    sample = run(
        f"""
        SELECT direction_id, {_WHERE}, vector FROM {directions}
        WHERE vector IS NOT NULL USING SAMPLE reservoir({SAMPLE} ROWS)
        """,
        None,
    )
    if sample.num_rows == 0:
        return None
    ids = sample["direction_id"].to_pylist()
    vectors = vector_matrix(sample["vector"])
    tokens = run(
        f"SELECT direction_id, token_id, score FROM {top_tokens} "
        "WHERE basis = 'unembed' AND direction_id IN (SELECT unnest(?))",
        [ids],
    )
    rows = {i: n for n, i in enumerate(ids)}
    owner = np.array([rows[i] for i in tokens["direction_id"].to_pylist()], np.int64)
    token_ids = numbers(tokens["token_id"]).astype(np.int64)
    if len(token_ids) and (token_ids.min() < 0 or token_ids.max() >= len(unembed)):
        bad = int(np.flatnonzero((token_ids < 0) | (token_ids >= len(unembed)))[0])
        row = sample.slice(int(owner[bad]), 1).to_pylist()[0]
        return f"{where(row)}: a top token id {token_ids[bad]} is not in the vocabulary"
    rows_u = np.asarray(unembed[token_ids], np.float32)
    recomputed = np.einsum("ij,ij->i", rows_u, vectors[owner])
    stored = numbers(tokens["score"]).astype(np.float64)
    allowed = SCORE_TOLERANCE * np.linalg.norm(rows_u, axis=1) + 1e-5
    wrong = np.flatnonzero(~(np.abs(recomputed - stored) <= allowed))
    if len(wrong) == 0:
        return None
    first = int(wrong[0])
    row = sample.slice(int(owner[first]), 1).to_pylist()[0]
    return (
        f"{where(row)}: the top_tokens score of token {token_ids[first]} is {stored[first]:.6g}, "
        f"its vector through the unembedding gives {recomputed[first]:.6g}"
    )
