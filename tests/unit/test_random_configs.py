"""The random models' configurations load as real ones would: no warning from transformers."""

from __future__ import annotations

import pytest

from atlas.models.random_models import RANDOM_SHAPES, random_config


@pytest.mark.parametrize("shape", sorted(RANDOM_SHAPES))
def test_a_random_configuration_is_made_without_warnings(
    shape: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """GPT-2's end-of-text id 50256 lies outside gpt2-tiny's 4,096 tokens: transformers printed
    two lines on every ingest of it, through the library too."""
    config = random_config(shape)
    assert capfd.readouterr().err == ""
    for special in (config.bos_token_id, config.eos_token_id):
        assert special is None or 0 <= special < config.vocab_size
