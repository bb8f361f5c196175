"""Token strings: the raw vocabulary entry, a display form, and a normalized form.

Raw tokens keep the tokenizer's markers (``Ġfire``, ``##ing``, ``▁fire``). The display form is
what a researcher wants to read: a word start is shown bare (``fire``) and a word continuation
gets a leading hyphen (``-ing``). The normalized form (lower case, markers stripped) is
tokenizer-independent and is what cross-model token-space search hashes.
"""

from __future__ import annotations

from collections.abc import Sequence

WORDPIECE_CONTINUATION = "##"
SPACE_MARKERS = ("Ġ", "▁")

# GPT-2's byte-level BPE maps each byte to a printable character; these are the ones a
# display string must turn back into whitespace.
_BYTE_LEVEL_WHITESPACE = {"Ġ": " ", "Ċ": "\n", "ĉ": "\t", "č": "\r"}


def detect_scheme(raw_tokens: Sequence[str]) -> str:
    """Return ``wordpiece`` when continuations are marked (``##``), else ``space-prefix``."""
    sample = raw_tokens[: min(len(raw_tokens), 50_000)]
    n_wordpiece = sum(1 for t in sample if t.startswith(WORDPIECE_CONTINUATION) and len(t) > 2)
    n_space = sum(1 for t in sample if t[:1] in SPACE_MARKERS)
    return "wordpiece" if n_wordpiece > n_space else "space-prefix"


def _decode_byte_level(token: str) -> str:
    return "".join(_BYTE_LEVEL_WHITESPACE.get(ch, ch) for ch in token).replace("▁", " ")


def display_form(token: str, scheme: str) -> str:
    """Readable form of one raw token: ``fire`` for a word start, ``-ing`` for a continuation."""
    if scheme == "wordpiece":
        if token.startswith(WORDPIECE_CONTINUATION) and len(token) > 2:
            return "-" + token[2:]
        return token
    text = _decode_byte_level(token)
    stripped = text.strip()
    if not stripped:
        return repr(text)[1:-1]  # pure whitespace: show it escaped, e.g. "\n"
    if text[0].isspace() or not stripped[0].isalnum():
        return stripped
    return "-" + stripped


def normalized_form(token: str) -> str:
    """Tokenizer-independent key: markers stripped, lower case, surrounding space removed."""
    if token.startswith(WORDPIECE_CONTINUATION) and len(token) > 2:
        token = token[2:]
    return _decode_byte_level(token).strip().lower()


def display_vocabulary(raw_tokens: Sequence[str]) -> list[str]:
    scheme = detect_scheme(raw_tokens)
    return [display_form(t, scheme) for t in raw_tokens]
