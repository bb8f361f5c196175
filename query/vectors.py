"""Turning a query (words, a direction, a vector file) into a unit vector of one space."""

from __future__ import annotations

import functools
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from atlas.core.errors import AtlasError, NoMatch
from atlas.core.reader import Reader
from atlas.core.tokens import normalized_form
from atlas.core.vectors import string_array


def split_words(text: str | list[str]) -> list[str]:
    """``fire flame`` / ``fire, flame`` / ``["fire", "flame"]`` -> ``["fire", "flame"]``."""
    parts = text if isinstance(text, list) else [text]
    words = [w for p in parts for w in re.split(r"[,\s]+", p) if w.strip()]
    if not words:
        raise AtlasError("empty search text: give one or more words")
    return words


@dataclass
class WordTokens:
    ids: list[int]  # token ids, for a residual-space query
    norms: list[str]  # their normalized strings, for a token-space one


def word_tokens(a: Reader, model_id: str, words: list[str]) -> dict[str, WordTokens]:
    """The tokens of the model each word names: every token whose normalized string equals the
    word's (casing and leading-space or ``##`` variants included), and every token the atlas
    displays as the word, so that a token as shown (``-fire``, the word piece ``##fire``)
    searches back to itself. Words that name no token are absent."""
    vocab = a.vocabulary(model_id)
    norms = {w: normalized_form(w) for w in words}  # valid text: checked by the parameters
    named = pc.or_kleene(  # a row of no normalized form (null) may still match as shown
        _any_of(vocab["token_norm"], list(dict.fromkeys(norms.values()))),
        _any_of(vocab["token_display"], list(norms)),
    )
    tokens = vocab.filter(named).to_pylist()
    found = {}
    for word, norm in norms.items():
        mine = [t for t in tokens if t["token_norm"] == norm or t["token_display"] == word]
        if mine:
            ids = sorted({t["token_id"] for t in mine})
            found[word] = WordTokens(ids, sorted({t["token_norm"] for t in mine} - {None}))
    return found


# Up to this many values, a column is compared with each (a scan of memcmp) rather than looked
# up in a hash set of them (which hashes every row): MiniLM's 30,522 tokens, one word, 0.10
# against 0.42 ms a column; a search asks for one or a few words.
FEW_VALUES = 4


def _any_of(column: Any, values: list[str]) -> Any:
    """Whether each row of the string ``column`` is one of ``values``."""
    if len(values) > FEW_VALUES:
        return pc.is_in(column, value_set=string_array(values))
    # the values as Arrow scalars from buffers: given Python strings, pyarrow imports pandas
    equal = [pc.equal(column, value) for value in string_array(values)]
    return functools.reduce(pc.or_kleene, equal)


def text_residual_vector(
    a: Reader, model_id: str, words: list[str], strict: bool = True
) -> tuple[np.ndarray | None, list[str]]:
    """Mean of the words' centered-unembedding directions (each word's tokens averaged first).

    Returns the unit query vector and the words the vocabulary does not have; when it has none
    of them, an error, or (not ``strict``: one model of several) no vector.
    """
    found = word_tokens(a, model_id, words)
    missing = [w for w in words if w not in found]
    if not found:
        if not strict:
            return None, missing
        raise NoMatch(f"no token of model {model_id!r} matches {', '.join(words)}")
    unembed = a.unembedding(model_id)
    try:
        groups = {tuple(t.ids) for t in found.values()}  # "Fire" and "fire": one word
        per_word = [
            unit(unembed[list(ids)].astype(np.float32).mean(axis=0)) for ids in sorted(groups)
        ]
    except IndexError:
        raise AtlasError(f"model {model_id!r}: its unembedding is damaged (too few rows)") from None
    return unit(np.mean(per_word, axis=0)), missing


def text_token_bag(
    a: Reader, models: list[str], words: list[str]
) -> tuple[dict[str, float], list[str]]:
    """The token-space vector of words (each normalized string the words name in any of
    ``models``, equal weights) and the words no model's vocabulary has; a :class:`NoMatch`
    when none has any of them."""
    norms: set[str] = set()
    named: set[str] = set()
    for model_id in models:
        for word, tokens in word_tokens(a, model_id, words).items():
            named.add(word)
            norms.update(n for n in tokens.norms if n)
    if not norms:
        raise NoMatch(f"no token of {listed(models)} matches {', '.join(words)}")
    missing = [w for w in dict.fromkeys(words) if w not in named]
    return {n: 1.0 / math.sqrt(len(norms)) for n in sorted(norms)}, missing


def listed(models: list[str], most: int = 5) -> str:
    """Model ids for a message: ``a``, ``a or b``, ``a, b or c``; past ``most``, a count."""
    if len(models) > most:
        return f"any of the {len(models)} models searched"
    return models[0] if len(models) == 1 else f"{', '.join(models[:-1])} or {models[-1]}"


def direction_vector(a: Reader, direction_id: int) -> tuple[str, np.ndarray]:
    """The model a direction belongs to and its stored residual-space vector (DuckDB's, not
    the index's copy: a damaged index cannot change a query)."""
    model_id = a.model_of(direction_id)
    a.residual_index(model_id)  # one line for a model without vectors, or a damaged index
    return model_id, a.stored_vectors(model_id, np.array([direction_id]))[0]


def direction_bag(a: Reader, direction_id: int) -> dict[str, float]:
    """A direction's token-space vector (its normalized token strings and weights)."""
    model_id = a.model_of(direction_id)
    rows = a.sql(
        f"SELECT token_norm, weight FROM {a.relation(model_id, 'token_bags')} "
        "WHERE direction_id = ?",
        [direction_id],
    ).to_pylist()
    return {r["token_norm"]: float(r["weight"]) for r in rows}


MAX_VECTOR_VALUES = 1 << 20  # a query vector is one residual direction: d_model values


def load_npy(source: str | Path | bytes, max_values: int = MAX_VECTOR_VALUES) -> np.ndarray:
    """A ``.npy`` array (a path or a file's bytes), its header read and checked before any of
    its data: never unpickled, and never larger than ``max_values`` numbers."""
    name = "the vector" if isinstance(source, bytes) else str(source)
    try:
        with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # fmt: skip
            shape, _, dtype = read_header(fh)
            if dtype.hasobject or dtype.kind not in "iuf":
                raise AtlasError(f"{name} must hold real numbers, not {dtype}")
            if int(np.prod(shape, dtype=np.int64)) > max_values:
                raise AtlasError(f"{name} has shape {shape}: more than {max_values:,} values")
            fh.seek(0)
            return np.asarray(np.lib.format.read_array(fh, allow_pickle=False))
    except AtlasError:
        raise
    except (OSError, ValueError, EOFError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a .npy file"
        raise AtlasError(f"cannot read {name} as a .npy array ({reason})") from None


def query_vector(source: str | Path | np.ndarray | bytes, widths: set[int]) -> np.ndarray:
    """A residual-space query vector from a ``.npy`` file (a path or its bytes) or an array:
    real numbers only, as many as one of ``widths`` (the models' d_model), finite and not all
    zero. Returned unit-length."""
    name = "the vector" if isinstance(source, np.ndarray | bytes) else str(source)
    vector = source if isinstance(source, np.ndarray) else load_npy(source)
    if not isinstance(vector, np.ndarray) or vector.dtype.kind not in "iuf":
        kind = getattr(vector, "dtype", type(vector))
        raise AtlasError(f"{name} must hold real numbers, not {kind}", param="vector")
    vector = vector.astype(np.float64).reshape(-1)
    if vector.shape[0] not in widths:
        raise AtlasError(
            f"{name} holds {vector.shape[0]} values; the model"
            + (f" has d_model {next(iter(widths))}" if len(widths) == 1
               else f"s searched have d_model {', '.join(map(str, sorted(widths)))}"),
            param="vector",
        )  # fmt: skip
    if not np.isfinite(vector).all() or not np.any(vector):
        raise AtlasError(f"{name} is zero or not finite", param="vector")
    return unit(vector / np.abs(vector).max())  # scaled first: a norm of 1e300s overflows


def unit(x: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(x))
    return (x / norm if norm > 0 else x).astype(np.float32)
