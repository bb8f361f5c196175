"""Messages on one line (``atlas.core.errors.one_line``), a long one cut after a word."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from atlas.core.errors import one_line


@given(st.text(max_size=900), st.integers(min_value=20, max_value=400))
def test_one_line_is_one_line_within_its_limit_and_says_when_it_cut(text: str, limit: int) -> None:
    line = one_line(text, limit)
    assert "\n" not in line and "\r" not in line and len(line) <= limit
    whole = one_line(text, 10**6)
    assert line == whole or (line.endswith("…") and whole.startswith(line[:-1]))


def test_a_long_message_is_cut_after_a_word() -> None:
    message = " ".join(f"word{i}" for i in range(100))
    line = one_line(message, 120)
    kept = line.removesuffix("…")
    assert line.endswith("…") and len(line) <= 120 and message.startswith(kept)
    assert message[len(kept)] == " "  # the last word kept whole
    assert one_line("short enough", 120) == "short enough"
