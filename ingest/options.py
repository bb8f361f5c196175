"""What one ingest is asked to do, with the defaults the CLI shows (import-light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from atlas.core.indexes import DEFAULT_EXACT_MAX

__all__ = [
    "BUNDLED",
    "DEFAULT_EXACT_MAX",
    "DEFAULT_GAP_TOLERANCE",
    "DEFAULT_TOP_K",
    "DEVICES",
    "DTYPES",
    "PROCESSING_CHOICES",
    "RANDOM_PREFIX",
    "IngestOptions",
]

DEFAULT_TOP_K = 20
# Relative singular-value gap (to sigma_max) below which a direction is flagged degenerate.
# A singular vector turns by about |E| / gap under a perturbation E (Wedin's theorem); below
# 1e-4 sigma_max, perturbations as small as half-precision rounding of the weights can turn it
# by order one, so only its group's span means something.
DEFAULT_GAP_TOLERANCE = 1e-4
DEVICES = ("auto", "cpu", "cuda")
PROCESSING_CHOICES = ("raw", "tl")
DTYPES = ("float32", "float64", "float16", "bfloat16")
BUNDLED = "minilm"
RANDOM_PREFIX = "random:"


@dataclass
class IngestOptions:
    model: str
    model_id: str | None = None
    device: str = "auto"
    processing: str = "raw"
    top_k: int = DEFAULT_TOP_K
    max_rank: int | None = None
    dtype: str = "float32"
    replace: bool = False
    gap_tolerance: float = DEFAULT_GAP_TOLERANCE
    exact_max: int = DEFAULT_EXACT_MAX
    coherence: bool = False  # the score stage: one sentence-encoder pass per new token string
