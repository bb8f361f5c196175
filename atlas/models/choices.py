"""The words a model is named and loaded with (import-light: no torch)."""

from __future__ import annotations

BUNDLED = "minilm"  # the real model that ships with svd-atlas, usable offline
RANDOM_PREFIX = "random:"  # random:SHAPE, random weights of a real shape
DEVICES = ("auto", "cpu", "cuda")
PROCESSING_CHOICES = ("raw", "tl")
DTYPES = ("float32", "float64", "float16", "bfloat16")
DEFAULT_PROCESSING, DEFAULT_DTYPE, DEFAULT_DEVICE = "raw", "float32", "auto"
