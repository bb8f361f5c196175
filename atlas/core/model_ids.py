"""The rule every model id follows (docs/storage.md#model-ids), in one place.

A model id names a model on the command line (``--model a,b`` lists several), in SQL, in URLs
and in the folder names of a Parquet tree (``model_id=<escaped id>``). So it must read back as
typed everywhere: hub names (``org/name``) and random shapes (``random:gpt2-small``) are fine;
anything that could step out of a folder, split a list or hide in a terminal is not.
"""

from __future__ import annotations

from typing import Any

from atlas.core.errors import AtlasError

MAX_MODEL_ID = 200
# "," separates ids in a list of models; "\\" is a path separator on Windows.
FORBIDDEN = {",": "a comma (commas separate ids in `model`)", "\\": "a backslash"}

RULE = (
    "a model id is 1 to 200 printable characters without surrounding spaces, commas or "
    "backslashes; '/' may separate its parts (org/name), which are neither empty, '.' nor '..'"
)


def model_id_problem(model_id: Any) -> str | None:
    """Why ``model_id`` breaks the rule, or ``None`` when it follows it."""
    if not isinstance(model_id, str) or not model_id:
        return "it is empty"
    if len(model_id) > MAX_MODEL_ID:
        return f"it is longer than {MAX_MODEL_ID} characters"
    if not model_id.isprintable():
        return "it holds a control character"
    if model_id != model_id.strip():
        return "it starts or ends with a space"
    for char, what in FORBIDDEN.items():
        if char in model_id:
            return f"it holds {what}"
    if any(part in ("", ".", "..") for part in model_id.split("/")):
        return "it has an empty, '.' or '..' part between slashes (a path)"
    return None


def check_model_id(model_id: Any) -> str:
    """``model_id`` when it follows the rule; otherwise one line saying why and what it is."""
    problem = model_id_problem(model_id)
    if problem is not None:
        raise AtlasError(f"model id {model_id!r} is not allowed: {problem}; {RULE}")
    return str(model_id)


def left_out(model_id: Any) -> str | None:
    """Why a reader leaves out a model it found under ``model_id`` (a tree or catalog written
    before the rule, or by hand), or ``None`` when the id is fine. The others stay readable."""
    problem = model_id_problem(model_id)
    if problem is None:
        return None
    return f"its id is not allowed ({problem}); ingest it again with `name` an allowed id"
