"""The coherence of bare token lists, led by its percentile against random lists.

The raw score (``atlas.models.coherence``) estimates P(a lenient judge names a theme): GPT-3 named
one for about 85% of the original authors' lists, and almost any list of real words scores
above 0.9. So a score alone says little; what is shown first is its **percentile**: the percent
of ``NULL_LISTS`` random lists of the same length, drawn uniformly (distinct tokens) from a
vocabulary, that score at or below it (``atlas.models.coherence.percentile``, the definition of the
atlas's stored ``coherence_pct``). Random lists land uniformly between 0 and 100.

The null is deterministic (seed ``NULL_SEED`` and the list length) and computed once per
vocabulary and length: scoring 10,000 lists from per-token tables takes about 0.2 s, and the
sorted scores are cached beside the judge's embeddings
(``atlas.models.coherence.default_cache_dir``), so a query afterwards only reads them. The
default vocabulary is the bundled MiniLM's (30,522 WordPiece tokens, in the atlas's display
form): the judge's own tokenizer.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from atlas.core.errors import AtlasError, BadParameter, NotReady
from atlas.models.coherence import (
    BIAS,
    WEIGHTS,
    Scorer,
    clean,
    default_cache_dir,
    encoder_version,
    features_of_ids,
    judged_string,
    parse_list,
    percentile,
    score_features,
)

# 10,000 lists per length: the percentile's standard error is at most 0.5 points (at the
# median; 0.1 at the 99th), below the one decimal shown, for 0.2 s of scoring once.
NULL_LISTS = 10_000
NULL_SEED = 0
MAX_TOKENS = 100  # longest list scored (the judge was calibrated on lists of 15)
# longest token scored: vocabulary entries are short, and each string the judge encodes is kept
# in a cache shared by every process on the machine (one long one made it 15 GB)
MAX_TOKEN_CHARS = 100
THEME = "P(a lenient judge names a theme)"


@dataclass(frozen=True)
class Vocabulary:
    """The tokens random lists are drawn from: a name to show, and what the judge reads of
    each token (``atlas.models.coherence.judged_string`` of its display form)."""

    name: str
    strings: tuple[str, ...]

    @property
    def digest(self) -> str:
        """Names the cached null: the vocabulary, the score's weights, the encoder, the sample."""
        h = hashlib.sha256()
        for part in (*self.strings, repr(WEIGHTS.tolist()), repr(BIAS), encoder_version()):
            h.update(part.encode("utf-8", "surrogatepass") + b"\0")
        h.update(f"{NULL_LISTS}:{NULL_SEED}".encode())
        return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def bundled_vocabulary() -> Vocabulary:
    """The bundled MiniLM's vocabulary (the judge's own tokenizer)."""
    from atlas.core.tokens import display_vocabulary
    from atlas.models.bundled import minilm_words

    strings = tuple(judged_string(t) for t in display_vocabulary(minilm_words()))
    return Vocabulary("minilm", strings)


@dataclass(frozen=True)
class ListCoherence:
    """One list's coherence: its percentile among random lists first, then the raw score."""

    tokens: list[str]
    coherence_pct: float  # percent of the null's random lists scoring at or below it
    coherence: float  # P(a lenient judge names a theme)
    null: dict[str, Any]  # what the percentile is against

    def to_dict(self) -> dict[str, Any]:
        return {
            "coherence_pct": self.coherence_pct,
            "coherence": self.coherence,
            "tokens": self.tokens,
            "null": self.null,
        }


class ListNull:
    """Sorted scores of ``NULL_LISTS`` random lists of one vocabulary, per list length."""

    def __init__(self, scorer: Scorer, vocabulary: Vocabulary, cache_dir: Path | None):
        self.scorer, self.vocabulary = scorer, vocabulary
        self.file = cache_dir / f"list-null-{vocabulary.digest}.npz" if cache_dir else None
        self._by_length: dict[int, np.ndarray] = {}
        self._tables: tuple[np.ndarray, ...] | None = None
        self._lock = threading.Lock()  # a server scores from many threads
        self._preparing: set[int] = set()  # lengths whose null a thread is computing
        self._preparing_lock = threading.Lock()

    def scores(self, length: int) -> np.ndarray:
        """The null of lists of ``length`` tokens, sorted ascending."""
        with self._lock:
            if length not in self._by_length:
                self._by_length.update(self._read())
            if length not in self._by_length:
                self._by_length[length] = self._compute(length)
                self._write()
            return self._by_length[length]

    def ready(self, length: int) -> bool:
        """Whether the null of ``length`` is at hand (in memory or in the cache file), without
        waiting for one being computed (it is not at hand then)."""
        if length in self._by_length:
            return True
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._by_length.update(self._read())
            return length in self._by_length
        finally:
            self._lock.release()

    def prepare(self, length: int) -> None:
        """Compute the null of ``length`` on a thread of its own, once however often asked,
        for a caller that cannot wait (a server's request: about a minute, once a machine)."""
        with self._preparing_lock:
            if length in self._preparing:
                return
            self._preparing.add(length)
        threading.Thread(
            target=self.scores, args=(length,), name="svd-atlas-coherence-null", daemon=True
        ).start()

    def describe(self, length: int) -> dict[str, Any]:
        return {
            "vocabulary": self.vocabulary.name,
            "vocabulary_size": len(self.vocabulary.strings),
            "length": length,
            "lists": NULL_LISTS,
            "seed": NULL_SEED,
        }

    def _compute(self, length: int) -> np.ndarray:
        if self._tables is None:
            self._tables = self.scorer.tables(list(self.vocabulary.strings))
        ids = random_lists(len(self.vocabulary.strings), length)
        return np.sort(score_features(features_of_ids(ids, *self._tables)))

    def _read(self) -> dict[int, np.ndarray]:
        if self.file is None or not self.file.exists():
            return {}
        try:
            with np.load(self.file) as data:
                return {int(k[1:]): data[k] for k in data.files}
        except (OSError, ValueError):  # a damaged cache is recomputed
            return {}

    def _write(self) -> None:
        if self.file is None:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp.npz")
        arrays: dict[str, Any] = {f"k{k}": v for k, v in sorted(self._by_length.items())}
        np.savez(tmp, **arrays)
        os.replace(tmp, self.file)  # atomic: a concurrent reader sees the old or the new file


def random_lists(vocabulary_size: int, length: int, n: int = NULL_LISTS) -> np.ndarray:
    """``[n, length]`` token ids, each row ``length`` distinct ids drawn uniformly; the same
    for the same arguments (seeded by ``NULL_SEED`` and ``length``)."""
    if length > vocabulary_size:
        raise AtlasError(f"a list of {length} tokens is longer than the vocabulary")
    rng = np.random.default_rng([NULL_SEED, length])
    ids = rng.integers(0, vocabulary_size, (n, length))
    while True:  # redraw the rows that repeat a token (rare while length << vocabulary)
        ordered = np.sort(ids, axis=1)
        repeats = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if not len(repeats):
            return ids
        ids[repeats] = rng.integers(0, vocabulary_size, (len(repeats), length))


@lru_cache(maxsize=4)
def _null(vocabulary: Vocabulary, cache_dir: Path | None) -> ListNull:
    return ListNull(Scorer(), vocabulary, cache_dir)


def _tokens_of(value: object) -> list[str]:
    """One list's tokens: a comma-separated string, or a list of strings."""
    if isinstance(value, str):
        return parse_list(value)
    if isinstance(value, list | tuple) and all(isinstance(t, str) for t in value):
        return [t for t in (clean(t) for t in value) if t]
    raise BadParameter(
        f"a token list is a comma-separated string or a list of strings, not {value!r:.80}"
    )


def _encodable(token: str) -> bool:
    """Whether ``token`` is text a tokenizer reads (no lone surrogates: undecodable bytes)."""
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def list_coherence(
    lists: Sequence[str | Sequence[str]],
    vocabulary: Vocabulary | None = None,
    cache_dir: Path | None | str = "default",
    wait: bool = True,
) -> list[ListCoherence]:
    """Score token lists (each a list of strings or one comma-separated string, >= 2 tokens)
    against random lists of ``vocabulary`` (default: the bundled MiniLM's). Without ``wait``,
    a null not computed yet is started on a thread of its own and :class:`NotReady` says so
    (a server's answer, where the first computation outlasts a request's time limit)."""
    parsed = [_tokens_of(x) for x in lists]
    for n, tokens in enumerate(parsed, 1):
        where = "the token list" if len(parsed) == 1 else f"token list {n}"
        if not 2 <= len(tokens) <= MAX_TOKENS:
            raise BadParameter(f"{where} needs 2 to {MAX_TOKENS} tokens, not {len(tokens)}")
        for token in tokens:
            if len(token) > MAX_TOKEN_CHARS:
                raise BadParameter(
                    f"{where}: a token of {len(token):,} characters; a token is at most "
                    f"{MAX_TOKEN_CHARS}"
                )
            if not token.isprintable() or not _encodable(token):
                raise BadParameter(f"{where}: {token!r} is not printable text")
    folder = default_cache_dir() if cache_dir == "default" else cache_dir
    null = _null(vocabulary or bundled_vocabulary(), None if folder is None else Path(folder))
    missing = sorted({len(t) for t in parsed if not null.ready(len(t))})
    if missing and not wait:
        for length in missing:
            null.prepare(length)
        raise NotReady(
            f"the coherence null of lists of {', '.join(map(str, missing))} tokens is being "
            f"computed: {NULL_LISTS:,} random lists, about a minute, once on this machine "
            "(kept in its cache); ask again shortly"
        )
    scores = null.scorer.score_lists(parsed)
    return [
        ListCoherence(
            tokens=tokens,
            coherence_pct=float(percentile(np.array([score]), null.scores(len(tokens)))[0]),
            coherence=float(score),
            null=null.describe(len(tokens)),
        )
        for tokens, score in zip(parsed, scores, strict=True)
    ]
