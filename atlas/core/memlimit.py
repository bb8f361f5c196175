"""How much memory a reading session may use, and the one line when a statement needs more.

Every reader's DuckDB session is bounded by DuckDB's own ``memory_limit`` and has no temp
space at all (``temp_directory`` empty, ``max_temp_directory_size`` 0): a statement that needs
more than the limit (a cross product, a sort of billions of rows) is refused with one line
instead of growing until the machine runs out, and nothing is ever spilled to disk. The limit
is fixed rather than a fraction of the machine, so a statement that runs on one machine runs
on any other with the same setting (see docs/reliability.md).
"""

from __future__ import annotations

import re
from typing import Any

from atlas.core.errors import BadParameter, MemoryLimitExceeded

DEFAULT_MEMORY_LIMIT = 2_000_000_000  # bytes: "2GB"
# Below this, opening an atlas and the library's own small queries cannot run.
MIN_MEMORY_LIMIT = 64_000_000
_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


MAX_MEMORY_LIMIT = 10**18  # DuckDB refuses a limit larger than about 1e20 bytes


def parse_memory_limit(value: Any) -> int:
    """``value`` in bytes: an integer, or a size such as ``"2GB"``, ``"512MiB"`` (None: the
    default); at least :data:`MIN_MEMORY_LIMIT`."""
    if value is None:
        return DEFAULT_MEMORY_LIMIT
    size: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        unit = _UNITS.get(match[2].lower())
        size = None if unit is None else float(match[1]) * unit
    if size is None:
        raise BadParameter(
            f"a memory limit is a size such as 2GB, 512MB or 4GiB (or bytes), not {value!r}",
            param="memory_limit",
        )
    if size > MAX_MEMORY_LIMIT:
        raise BadParameter(
            f"a memory limit of {value!r} is more than DuckDB takes "
            f"(at most {MAX_MEMORY_LIMIT // 10**12:,} TB)",
            param="memory_limit",
        )
    if size < MIN_MEMORY_LIMIT:
        raise BadParameter(
            f"a memory limit of {value!r} is too small: an atlas needs at least "
            f"{format_bytes(MIN_MEMORY_LIMIT)}",
            param="memory_limit",
        )
    return int(size)


def format_bytes(n: int) -> str:
    """``2000000000`` -> ``2 GB`` (decimal units, three significant digits)."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def session_config(memory_limit: int) -> dict[str, str | bool | int | float | list[str]]:
    """DuckDB settings for a reading session: at most ``memory_limit`` bytes, no spilling."""
    return {
        "memory_limit": f"{memory_limit}B",
        "temp_directory": "",
        "max_temp_directory_size": "0B",
    }


def memory_limit_exceeded(memory_limit: int) -> MemoryLimitExceeded:
    return MemoryLimitExceeded(
        f"the query needed more than {format_bytes(memory_limit)} of memory, this session's "
        "limit, and was stopped (raise `memory_limit`)"
    )
