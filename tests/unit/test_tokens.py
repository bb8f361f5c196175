"""Display and normalized token forms for the three tokenizer families."""

from __future__ import annotations

from atlas.core.tokens import detect_scheme, display_form, normalized_form


def test_wordpiece() -> None:
    vocab = ["fire", "##ing", "##s", "the", "[CLS]"]
    assert detect_scheme(vocab) == "wordpiece"
    assert [display_form(t, "wordpiece") for t in vocab] == ["fire", "-ing", "-s", "the", "[CLS]"]


def test_byte_level_bpe() -> None:
    vocab = ["Ġfire", "ing", "Ġthe", "Ċ", ",", "ĠFire"]
    assert detect_scheme(vocab) == "space-prefix"
    shown = [display_form(t, "space-prefix") for t in vocab]
    assert shown == ["fire", "-ing", "the", "\\n", ",", "Fire"]


def test_sentencepiece() -> None:
    assert display_form("▁fire", "space-prefix") == "fire"
    assert display_form("fly", "space-prefix") == "-fly"


def test_normalized_form_is_tokenizer_independent() -> None:
    assert {normalized_form(t) for t in ["Ġfire", "▁Fire", "fire", "##fire", "FIRE"]} == {"fire"}
