"""Turning a query (words, a direction, a vector file) into a unit vector of one space."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from atlas.errors import AtlasError
from atlas.handle import Atlas
from atlas.indexes import reconstruct
from atlas.layout import UNEMBED
from atlas.token_space import word_bag
from atlas.tokens import normalized_form


def split_words(text: str | list[str]) -> list[str]:
    """``fire flame`` / ``fire, flame`` / ``["fire", "flame"]`` -> ``["fire", "flame"]``."""
    parts = text if isinstance(text, list) else [text]
    words = [w for p in parts for w in re.split(r"[,\s]+", p) if w.strip()]
    if not words:
        raise AtlasError("empty search text: give one or more words")
    return words


def word_token_ids(a: Atlas, model_id: str, words: list[str]) -> dict[str, list[int]]:
    """Every token of the model whose normalized string equals a word (casing and
    leading-space variants included)."""
    keys = {normalized_form(w): w for w in words}
    rows = (
        a.con.sql(
            "SELECT token_norm, list(token_id ORDER BY token_id) AS ids "
            f"FROM {a.alias(model_id)}.vocab "
            "WHERE token_norm IN (SELECT unnest(?)) GROUP BY token_norm",
            params=[list(keys)],
        )
        .to_arrow_table()
        .to_pylist()
    )
    return {keys[r["token_norm"]]: r["ids"] for r in rows}


def text_residual_vector(a: Atlas, model_id: str, words: list[str]) -> tuple[np.ndarray, list[str]]:
    """Mean of the words' centered-unembedding directions (each word's tokens averaged first).

    Returns the unit query vector and the words the vocabulary does not have.
    """
    found = word_token_ids(a, model_id, words)
    missing = [w for w in words if w not in found]
    if not found:
        raise AtlasError(f"no token of model {model_id!r} matches {', '.join(words)}")
    unembed = np.load(a.store_path(model_id) / UNEMBED, mmap_mode="r")
    per_word = [unit(unembed[ids].astype(np.float32).mean(axis=0)) for ids in found.values()]
    return unit(np.mean(per_word, axis=0)), missing


def text_token_bag(words: list[str]) -> dict[str, float]:
    bag = word_bag(words)
    if not bag:
        raise AtlasError(f"no searchable word in {' '.join(words)!r}")
    return bag


def direction_vector(a: Atlas, direction_id: int) -> tuple[str, np.ndarray]:
    """The model a direction belongs to and its stored residual-space vector."""
    model_id = a.model_of(direction_id)
    return model_id, reconstruct(a.residual_index(model_id), np.array([direction_id]))[0]


def direction_bag(a: Atlas, direction_id: int) -> dict[str, float]:
    """A direction's token-space vector (its normalized token strings and weights)."""
    model_id = a.model_of(direction_id)
    rows = a.con.sql(
        f"SELECT token_norm, weight FROM {a.alias(model_id)}.token_bags WHERE direction_id = ?",
        params=[direction_id],
    ).fetchall()
    return {t: float(w) for t, w in rows}


def file_vector(path: str | Path, d_model: int) -> np.ndarray:
    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AtlasError(f"cannot read vector file {path}: {exc}") from None
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != d_model:
        raise AtlasError(f"{path} holds {vector.shape[0]} values; the model has d_model {d_model}")
    if not np.isfinite(vector).all() or not np.any(vector):
        raise AtlasError(f"{path} is zero or not finite")
    return unit(vector)


def unit(x: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(x))
    return (x / norm if norm > 0 else x).astype(np.float32)
