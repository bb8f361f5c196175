"""Memory limits: what sizes mean, and the ones refused."""

from __future__ import annotations

import pytest

from atlas.core.errors import AtlasError
from atlas.core.memlimit import DEFAULT_MEMORY_LIMIT, format_bytes, parse_memory_limit


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, DEFAULT_MEMORY_LIMIT),
        ("2GB", 2 * 10**9),
        ("512MiB", 512 * 2**20),
        (" 1.5 gb ", 1_500_000_000),
        ("4GiB", 4 * 2**30),
        ("100000000", 100_000_000),
        (300_000_000, 300_000_000),
    ],
)
def test_sizes_are_duckdbs_units(given: object, expected: int) -> None:
    assert parse_memory_limit(given) == expected


@pytest.mark.parametrize("given", ["", "GB", "2 XB", "-1GB", "1e9", 2.5, True, [1]])
def test_what_is_not_a_size_is_one_line(given: object) -> None:
    with pytest.raises(AtlasError, match="a size such as"):
        parse_memory_limit(given)


@pytest.mark.parametrize("given", ["1MB", 0, -5, "63999999B"])
def test_too_small_to_open_an_atlas(given: object) -> None:
    with pytest.raises(AtlasError, match="too small"):
        parse_memory_limit(given)


def test_sizes_read_back_in_decimal_units() -> None:
    assert format_bytes(DEFAULT_MEMORY_LIMIT) == "2 GB"
    assert format_bytes(256_000_000) == "256 MB"
    assert format_bytes(4 * 2**30) == "4.29 GB"
    assert format_bytes(999) == "999 bytes"
