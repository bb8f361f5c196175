"""Concept search: nearest directions to a query, in both valences, exact or approximate.

Within one model, queries live in the model's residual space (the unit singular vectors,
searched through FAISS). Across models, they live in the token space (``atlas.core.token_space``),
where a direction is a sparse unit vector over normalized token strings and cosines are exact
sparse dot products computed by DuckDB; or, asked for, in each model's own residual space
(words embedded by each model's unembedding, a vector in every model of its width).

Across models, a search streams: each model's index (or token bags) is read, searched for
the model's best ``k`` and merged into the running top ``k``, which is exact because every
model's ``k`` best include its share of the overall best. The reader holds the indexes a
long-running process pinned (``Atlas.load_indexes``) and the last other one used
(``IndexCache``), so memory stays bounded by about one model's index beyond the pinned ones,
however many models are searched.

A hit's ``score`` is ``|cos|`` and its ``sign`` says which valence matched: ``-1`` means the
negated direction points at the query, i.e. the concept sits in its negative tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from atlas.core.cancel import check as check_stopped
from atlas.core.errors import AtlasError, BadParameter, DamagedIndex, NoMatch, no_models
from atlas.core.hit_rows import HitRow
from atlas.core.index_guard import exact_cosines
from atlas.core.indexes import merge_valences
from atlas.core.reader import Reader, no_vectors
from atlas.core.vectors import numbers
from query.filters import Filters
from query.nomatch import check_bag, check_filters
from query.vectors import (
    direction_bag,
    direction_vector,
    listed,
    query_vector,
    split_words,
    text_residual_vector,
    text_token_bag,
)

SPACES = ("residual", "token")


@dataclass
class Hit:
    direction_id: int
    model_id: str
    layer: int
    head: int | None
    kind: str
    side: str
    sv_index: int
    sigma: float
    sign: int
    score: float
    degenerate: bool
    tokens: list[str] = field(default_factory=list)  # the matching valence's top tokens
    token_scores: list[float] = field(default_factory=list)  # their scores, in order
    opposite_tokens: list[str] = field(default_factory=list)
    space: str = "residual"

    def to_dict(self) -> dict[str, Any]:
        """The hit's JSON record: its fields, the lists copied (``dataclasses.asdict`` copies
        deeply, value by value: a third of a millisecond per ten hits on the server)."""
        record = {name: getattr(self, name) for name in HIT_FIELDS}
        for name in ("tokens", "token_scores", "opposite_tokens"):
            record[name] = list(record[name])
        return record


HIT_FIELDS = [f.name for f in fields(Hit)]  # a hit's JSON record (CLI and HTTP API alike)


class Hits(list[Hit]):
    """Search results, with the notes a reader of them should know (also given as warnings)."""

    def __init__(self, hits: list[Hit], notes: list[str]):
        super().__init__(hits)
        self.notes = notes


@dataclass
class Query:
    """A resolved query: a residual vector per model, or a token bag for them all."""

    space: str
    models: list[str]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    bag: dict[str, float] | None = None
    exclude: tuple[str, int] | None = None  # a --direction query's (model, id): not returned
    notes: list[str] = field(default_factory=list)


def resolve_query(
    a: Reader,
    text: str | list[str] | None = None,
    direction: int | None = None,
    vector: str | Path | np.ndarray | None = None,
    models: tuple[str, ...] | None = None,
    space: str = "auto",
) -> Query:
    """Turn words, a direction id or a vector file into a query of the right space.

    ``auto`` searches residual space when only one model is in play (the atlas holds one, or
    ``models`` names one, or the query is a direction whose model is the only candidate) and
    token space otherwise.
    """
    if sum(x is not None for x in (text, direction, vector)) != 1:
        raise BadParameter("give exactly one of `text`, `direction` or `vector`")
    if text is not None and not (
        isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))
    ):
        raise AtlasError(f"a string or a list of strings, not {text!r}", param="text")
    if space not in (*SPACES, "auto"):
        raise AtlasError(f"unknown space {space!r}; choose residual, token or auto", param="space")
    candidates = list(models) if models else a.model_ids()
    for m in candidates:
        a.require_model(m)  # an unknown model id fails here, naming the known ones
    if not candidates:
        raise AtlasError(no_models(a.location, list(a.damaged)))
    home = a.model_of(direction) if direction is not None else None
    notes: list[str] = []
    if space == "auto":
        one_model = candidates == [home] or len(candidates) == 1
        space = "residual" if one_model or vector is not None else "token"
        if text is not None and one_model and not a.has_unembedding(candidates[0]):
            # a Parquet tree, or a bundle loaded with --vectors none: no W_U to embed words
            space = "token"
            notes.append(
                f"{candidates[0]} has no unembedding here: words are searched in token space"
            )

    if space == "token":
        if vector is not None:
            raise AtlasError("a residual-space vector cannot search token space", param="vector")
        if direction is not None:
            bag = direction_bag(a, direction)
            return Query(space, candidates, bag=bag, exclude=(str(home), direction))
        words = split_words(text)  # type: ignore[arg-type]
        bag, missing = text_token_bag(a, candidates, words)
        if missing:
            notes.append(f"not in the vocabulary of {listed(candidates)}: {', '.join(missing)}")
        return Query(space, candidates, bag=bag, notes=notes)

    if direction is not None:
        if models and home not in candidates:
            raise AtlasError(
                f"direction {direction} belongs to {home!r}; residual spaces of different models "
                "are unrelated",
                param="model",
                hint="`space` token searches other models",
            )
        home, q = direction_vector(a, direction)
        return Query(space, [home], {home: q}, exclude=(home, direction))
    if vector is not None:
        return _vector_query(a, vector, candidates)
    return _words_query(a, split_words(text), candidates)  # type: ignore[arg-type]


def _vector_query(a: Reader, vector: Any, candidates: list[str]) -> Query:
    """A residual vector, searched in every candidate model of its width."""
    searchable = [m for m in candidates if a.has_vectors(m)]
    if not searchable:
        raise no_vectors(candidates[0])
    widths = {m: a.shape(m)[0] for m in searchable}
    q = query_vector(vector, set(widths.values()))
    models = [m for m in searchable if widths[m] == q.size]
    others = [m for m in searchable if widths[m] != q.size]
    notes = [f"not searched (d_model is not {q.size}): {', '.join(others)}"] if others else []
    if len(searchable) < len(candidates):
        lacking = [m for m in candidates if m not in searchable]
        notes.append(f"not searched (no vectors here): {', '.join(lacking)}")
    return Query("residual", models, dict.fromkeys(models, q), notes=notes)


def _words_query(a: Reader, words: list[str], candidates: list[str]) -> Query:
    """Words, embedded by each candidate model's own unembedding."""
    vectors, notes, lacking = {}, [], []
    for model_id in candidates:
        if not (a.has_unembedding(model_id) and a.has_vectors(model_id)):
            lacking.append(model_id)
            continue
        q, missing = text_residual_vector(a, model_id, words, strict=len(candidates) == 1)
        if q is None:
            notes.append(f"not in {model_id}'s vocabulary: {', '.join(words)}")
            continue
        if missing:
            notes.append(f"not in {model_id}'s vocabulary: {', '.join(missing)}")
        vectors[model_id] = q
    if lacking and not vectors and len(lacking) == len(candidates):
        raise AtlasError(
            f"{', '.join(lacking)}: no unembedding or no vectors here, so words cannot be "
            "searched in residual space",
            param="space",
            hint="`space` token searches them",
        )
    if lacking:
        notes.append(
            f"no unembedding or no vectors here, so not searched in residual space: "
            f"{', '.join(lacking)} (`space` token searches them)"
        )
    if not vectors:
        raise NoMatch(f"no token of {listed(candidates)} matches {', '.join(words)}")
    return Query("residual", list(vectors), vectors, notes=notes)


def approximate_note(a: Reader, query: Query, filters: Filters) -> str | None:
    """What a reader should know when an unfiltered residual search used an approximate index
    (a filtered one scans its subset exactly)."""
    if query.space != "residual" or filters.active:
        return None
    approximate = [m for m in query.models if not a.has_exact_index(m)]
    if not approximate:
        return None
    one = len(approximate) == 1
    return (
        f"{', '.join(approximate)} {'has an' if one else 'have'} approximate "
        f"ind{'ex' if one else 'exes'} (more directions than `exact_max` at ingest): "
        "scores are exact, but a true neighbour is missed now and then (`svd-atlas check` "
        "measures its recall)"
    )


def search(
    a: Reader,
    query: Query,
    filters: Filters | None = None,
    *,
    k: int,
    min_score: float = 0.0,
) -> Hits:
    """The ``k`` directions with the largest ``|cos|`` to the query, across its models; a
    model whose index is refused as damaged is left out with a note (the only model searched
    is one line instead). ``k`` and ``min_score`` are checked by the caller
    (:class:`atlas.params.SearchParams`)."""
    filters = filters or Filters()
    scored: list[tuple[float, int, str]] = []
    refused: list[str] = []
    for model_id in query.models:
        check_stopped()  # a deadline or a stop ends a search between models
        if query.space == "residual":
            try:
                q = query.vectors[model_id]
                ids, sims = nearest_residual(a, model_id, q, filters, k + 1)
            except DamagedIndex as exc:
                if len(query.models) == 1:
                    raise
                refused.append(f"not searched: {exc}")
                continue
        else:
            assert query.bag is not None
            ids, sims = nearest_tokens(a, model_id, query.bag, filters, k + 1)
        scored += [
            (float(s), int(i), model_id)
            for i, s in zip(ids, sims, strict=True)
            if (model_id, i) != query.exclude and abs(s) >= min_score
        ]
    if not scored:
        check_filters(a, query.models, filters)
        if query.bag is not None and query.exclude is None:
            check_bag(a, query.models, query.bag, filters)
    scored.sort(key=lambda t: (-abs(t[0]), t[1], t[2]))
    return Hits(describe(a, scored[:k], query.space), refused)


def nearest_residual(
    a: Reader, model_id: str, q: np.ndarray, filters: Filters, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ids and signed cosines of the ``k`` largest ``|cos|`` in one model's residual index."""
    index = a.residual_index(model_id)
    both = np.stack([q, -q]).astype(np.float32)
    if not filters.active:
        sims, ids = index.search(both, min(k, index.ntotal))
    else:
        allowed = filters.allowed_ids(a, model_id)
        if len(allowed) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        sims, ids = index.search_among(both, min(k, len(allowed)), allowed)
    ids, sims = merge_valences(ids, sims, k)
    return ids, scored_from_store(a, model_id, q, ids, sims)


def scored_from_store(
    a: Reader, model_id: str, q: np.ndarray, ids: np.ndarray, index_sims: np.ndarray
) -> np.ndarray:
    """The signed cosines of the index's answers, recomputed from the vectors the store holds
    (a damaged index is refused here: ``atlas.core.index_guard``)."""
    if len(ids) == 0:
        return np.zeros(0, np.float32)
    stored = a.stored_vectors(model_id, ids)
    with a.refusing_damaged_index(model_id):
        return exact_cosines(model_id, q, stored, index_sims)


def nearest_tokens(
    a: Reader, model_id: str, bag: dict[str, float], filters: Filters, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact sparse cosines in token space for one model (see ``atlas.core.token_space``)."""
    condition, params = filters.where()
    rows = a.sql(
        f"""
        WITH q AS (SELECT unnest(?) AS token_norm, unnest(?) AS qw),
        scores AS (
            SELECT b.direction_id, sum(b.weight * q.qw) AS score
            FROM {a.relation(model_id, "token_bags")} b JOIN q USING (token_norm)
            GROUP BY b.direction_id
        )
        SELECT s.direction_id, s.score FROM scores s
        JOIN {a.relation(model_id, "directions")} USING (direction_id)
        WHERE {condition}
        ORDER BY abs(s.score) DESC, s.direction_id LIMIT ?
        """,
        [list(bag), list(bag.values()), *params, k],
    )
    return (
        numbers(rows["direction_id"]).astype(np.int64),
        numbers(rows["score"]).astype(np.float32),
    )


def describe(a: Reader, scored: list[tuple[float, int, str]], space: str) -> list[Hit]:
    """Hits (score, direction id, the model it was found in) with their metadata and tokens,
    in the order given (``Reader.hit_rows``: each model's hit-row file in an atlas directory,
    its tables elsewhere). The model is given, not looked up by id: in a Parquet tree grown
    from several atlases two models may hold the same id."""
    by_model: dict[str, list[int]] = {}
    for _, i, model_id in scored:
        by_model.setdefault(model_id, []).append(i)
    rows: dict[tuple[str, int], HitRow] = {}
    for model_id, ids in by_model.items():
        rows |= {(model_id, i): r for i, r in a.hit_rows(model_id, ids).items()}
    hits = []
    for score, i, model_id in scored:
        r = rows[model_id, i]
        sign = 1 if score >= 0 else -1
        hits.append(
            Hit(
                direction_id=i,
                model_id=model_id,
                layer=r.layer,
                head=r.head,
                kind=r.kind,
                side=r.side,
                sv_index=r.sv_index,
                sigma=r.sigma,
                sign=sign,
                score=abs(score),
                degenerate=r.degenerate,
                tokens=r.pos_tokens if sign > 0 else r.neg_tokens,
                token_scores=r.pos_scores if sign > 0 else r.neg_scores,
                opposite_tokens=r.neg_tokens if sign > 0 else r.pos_tokens,
                space=space,
            )
        )
    return hits
