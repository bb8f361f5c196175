"""Fuzzing the query-parsing layer with hypothesis: only AtlasError may ever escape.

Each property also checks what a successful parse returns, so a parser that swallowed input
silently would fail too. Example counts are modest to keep the suite fast.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.core.errors import AtlasError
from atlas.core.sqlguard import check_statement
from atlas.core.tokens import display_form, normalized_form
from atlas.params import FilterParams, validate
from query.vectors import split_words

FAST = settings(max_examples=200, deadline=None)
# Unicode text with a bias towards the characters parsers care about.
TEXT = st.text(st.sampled_from("0123456789:,-+ _\t\n;'\"#Ġ▁٣") | st.characters(), max_size=30)
# Words the MiniLM vocabulary has (in several casings), mixed with arbitrary text.
WORDS = st.sampled_from(["fire", "Water", "KING", " city ", "##ing", "ü", "über"]) | TEXT
SQL_WORDS = st.sampled_from(
    ["SELECT", "1", "*", "FROM", "directions", "models", ";", "DROP", "TABLE", "INSERT", "INTO",
     "CREATE", "COPY", "TO", "'x'", "ATTACH", "PRAGMA", "EXPLAIN", "WITH", "AS", "(", ")", "--",
     "/*", "*/", "$1", "?", "\x00", "é", "\n"]
)  # fmt: skip


@FAST
@given(TEXT)
def test_layer_text(text: str) -> None:
    try:
        parsed = validate(FilterParams, layer=text).filters().layers
    except AtlasError as exc:
        assert exc.param == "layer"
        return
    if text == "":  # what a form sends for a field left blank: no restriction
        assert parsed is None
        return
    assert parsed is not None
    start, stop = parsed
    assert isinstance(start, int) and (stop is None or isinstance(stop, int))
    if ":" not in text:
        assert stop == start + 1 == int(text) + 1


@FAST
@given(TEXT)
def test_head_text(text: str) -> None:
    try:
        heads = validate(FilterParams, head=text).filters().heads
    except AtlasError as exc:
        assert exc.param == "head" and "give head numbers" in str(exc)
        return
    if text == "":
        assert heads is None
        return
    # items are trimmed of what str.strip() trims, as model names are ("0\x1f" is head 0)
    assert all(x.strip().isascii() and x.strip().isdigit() for x in text.split(","))
    assert heads == tuple(int(x.strip()) for x in text.split(","))


@FAST
@given(TEXT)
def test_model_list_text(text: str) -> None:
    chunks = text.split(",")
    try:
        names = validate(FilterParams, model=text).models()
    except AtlasError as exc:  # an empty name, or text that is not Unicode (a lone surrogate)
        assert exc.param == "model"
        assert not all(chunk.strip() for chunk in chunks) or not text.isprintable()
        return
    if text == "":  # what a form sends for a field left blank: no restriction
        assert names is None
        return
    assert names is not None and all(chunk.strip() for chunk in chunks)
    assert all(n and n == n.strip() and "," not in n for n in names)
    assert len(names) == len(chunks)
    assert validate(FilterParams, model=",".join(names)).models() == names
    assert validate(FilterParams, model=list(names)).models() == names  # Python's list alike


@FAST
@given(st.one_of(TEXT, st.lists(TEXT, max_size=4)))
def test_split_words(text: str | list[str]) -> None:
    try:
        words = split_words(text)
    except AtlasError as exc:
        assert "empty search text" in str(exc)
        return
    assert words and all(
        w.strip() and "," not in w and not any(c.isspace() for c in w) for w in words
    )


@FAST
@given(st.lists(SQL_WORDS, max_size=12).map(" ".join) | st.text(max_size=40), st.booleans())
def test_check_statement(query: str, write: bool) -> None:
    import duckdb

    try:
        check_statement(query, write)
    except AtlasError as exc:
        assert "\n" not in str(exc)
        return
    # what passes is one statement DuckDB can parse; what it may do is judged by its effect
    # on a real atlas (tests/integration/test_sql_hostile.py), not by this list
    assert len(duckdb.extract_statements(query)) == 1


@FAST
@given(st.text(max_size=20), st.sampled_from(["wordpiece", "space-prefix"]))
def test_token_forms(token: str, scheme: str) -> None:
    assert isinstance(display_form(token, scheme), str)
    norm = normalized_form(token)
    assert isinstance(norm, str) and norm == norm.strip()
