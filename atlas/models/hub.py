"""Quiet loading from Hugging Face files, without touching process-wide hub settings.

Local files (the bundled model, local folders, the coherence judge) are read with
``local_files_only=True`` on each loader call, so nothing here ever reaches for the hub, and
the caller's ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` are never read or changed: a later hub
download in the same notebook works as if svd-atlas had never run. transformers' logging and
progress bars, which would clutter the ingest's own progress, are off for the duration of a
call only (:func:`quiet`) and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet() -> Iterator[None]:
    """transformers' warnings and progress bars off inside the block."""
    import transformers
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
