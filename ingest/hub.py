"""Loading from local files without touching the caller's process-wide Hugging Face settings.

The bundled model and local folders must never reach for the hub, and transformers' logging
and progress bars would clutter the ingest's own progress. Both are set for the duration of a
call only (:func:`offline` and :func:`quiet`) and restored afterwards, so a later hub download
in the same notebook works as if svd-atlas had never run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextmanager
def offline() -> Iterator[None]:
    """No hub access inside the block (huggingface_hub reads its flag at call time)."""
    import huggingface_hub.constants as hub_constants

    saved_env = {name: os.environ.get(name) for name in _OFFLINE_VARIABLES}
    saved_flag = hub_constants.HF_HUB_OFFLINE
    os.environ.update(dict.fromkeys(_OFFLINE_VARIABLES, "1"))
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_flag
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
