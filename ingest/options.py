"""What one ingest is asked to do, with the defaults the CLI shows (import-light: no torch)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from atlas.core.errors import AtlasError
from atlas.core.indexes import DEFAULT_EXACT_MAX
from atlas.models.choices import (
    BUNDLED,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_PROCESSING,
    DEVICES,
    DTYPES,
    PROCESSING_CHOICES,
    RANDOM_PREFIX,
)

__all__ = [
    "BUNDLED",
    "DEFAULT_DEVICE",
    "DEFAULT_DTYPE",
    "DEFAULT_EXACT_MAX",
    "DEFAULT_GAP_TOLERANCE",
    "DEFAULT_PROCESSING",
    "DEFAULT_RETRIES",
    "DEFAULT_TOP_K",
    "DEVICES",
    "DTYPES",
    "LOCAL_RAY",
    "PROCESSING_CHOICES",
    "RANDOM_PREFIX",
    "IngestOptions",
    "read_model_list",
]

DEFAULT_TOP_K = 20
# Relative singular-value gap (to sigma_max) below which a direction is flagged degenerate.
# A singular vector turns by about |E| / gap under a perturbation E (Wedin's theorem); below
# 1e-4 sigma_max, perturbations as small as half-precision rounding of the weights can turn it
# by order one, so only its group's span means something.
DEFAULT_GAP_TOLERANCE = 1e-4
DEFAULT_RETRIES = 3  # times a job's model is retried on Ray when its worker dies
LOCAL_RAY = "local"  # --ray without an address: a Ray cluster on this machine, for the job


@dataclass
class IngestOptions:
    model: str
    model_id: str | None = None
    device: str = DEFAULT_DEVICE
    processing: str = DEFAULT_PROCESSING
    top_k: int = DEFAULT_TOP_K
    max_rank: int | None = None
    dtype: str = DEFAULT_DTYPE
    replace: bool = False
    gap_tolerance: float = DEFAULT_GAP_TOLERANCE
    exact_max: int = DEFAULT_EXACT_MAX
    coherence: bool = False  # the score stage: one sentence-encoder pass per new token string


def read_model_list(lines: Iterable[str], where: str) -> list[tuple[str, str | None]]:
    """A job file (``--from FILE``): ``(MODEL, ID or None)`` for each line ``MODEL [--name ID]``,
    quoted as in a shell; blank lines and ``#`` comments are ignored."""
    out: list[tuple[str, str | None]] = []
    for number, line in enumerate(lines, 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise AtlasError(f"{where} line {number}: {exc}") from None
        if not words:
            continue
        if len(words) == 1:
            out.append((words[0], None))
        elif len(words) == 3 and words[1] == "--name":
            out.append((words[0], words[2]))
        else:
            raise AtlasError(
                f"{where} line {number}: expected MODEL or MODEL --name ID, got {line.strip()!r}"
            )
    if not out:
        raise AtlasError(f"{where} names no model")
    return out
