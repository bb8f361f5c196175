"""Turning a query (words, a direction, a vector file) into a unit vector of one space."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from atlas.core.errors import AtlasError
from atlas.core.reader import Reader
from atlas.core.token_space import word_bag
from atlas.core.tokens import normalized_form


def split_words(text: str | list[str]) -> list[str]:
    """``fire flame`` / ``fire, flame`` / ``["fire", "flame"]`` -> ``["fire", "flame"]``."""
    parts = text if isinstance(text, list) else [text]
    words = [w for p in parts for w in re.split(r"[,\s]+", p) if w.strip()]
    if not words:
        raise AtlasError("empty search text: give one or more words")
    return words


def word_token_ids(a: Reader, model_id: str, words: list[str]) -> dict[str, list[int]]:
    """Every token of the model whose normalized string equals a word (casing and
    leading-space variants included)."""
    keys = {normalized_form(w): w for w in words}
    rows = a.sql(
        "SELECT token_norm, list(token_id ORDER BY token_id) AS ids "
        f"FROM {a.relation(model_id, 'vocab')} "
        "WHERE token_norm IN (SELECT unnest(?)) GROUP BY token_norm",
        [list(keys)],
    ).to_pylist()
    return {keys[r["token_norm"]]: r["ids"] for r in rows}


def text_residual_vector(
    a: Reader, model_id: str, words: list[str], strict: bool = True
) -> tuple[np.ndarray | None, list[str]]:
    """Mean of the words' centered-unembedding directions (each word's tokens averaged first).

    Returns the unit query vector and the words the vocabulary does not have; when it has none
    of them, an error, or (not ``strict``: one model of several) no vector.
    """
    found = word_token_ids(a, model_id, words)
    missing = [w for w in words if w not in found]
    if not found:
        if not strict:
            return None, missing
        raise AtlasError(f"no token of model {model_id!r} matches {', '.join(words)}")
    unembed = a.unembedding(model_id)
    try:
        per_word = [unit(unembed[ids].astype(np.float32).mean(axis=0)) for ids in found.values()]
    except IndexError:
        raise AtlasError(f"model {model_id!r}: its unembedding is damaged (too few rows)") from None
    return unit(np.mean(per_word, axis=0)), missing


def text_token_bag(words: list[str]) -> dict[str, float]:
    bag = word_bag(words)
    if not bag:
        raise AtlasError(f"no searchable word in {' '.join(words)!r}")
    return bag


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
        raise AtlasError(f"{name} must hold real numbers, not {kind}")
    vector = vector.astype(np.float64).reshape(-1)
    if vector.shape[0] not in widths:
        raise AtlasError(
            f"{name} holds {vector.shape[0]} values; the model"
            + (f" has d_model {next(iter(widths))}" if len(widths) == 1
               else f"s searched have d_model {', '.join(map(str, sorted(widths)))}")
        )  # fmt: skip
    if not np.isfinite(vector).all() or not np.any(vector):
        raise AtlasError(f"{name} is zero or not finite")
    return unit(vector)


def unit(x: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(x))
    return (x / norm if norm > 0 else x).astype(np.float32)
