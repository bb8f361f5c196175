"""Words to tokens (``query.vectors.word_tokens``), a scan of the vocabulary in memory, against
the SQL join it replaced, run by DuckDB over the same vocabulary: for a few words (each
compared with the column) and for many (looked up in a hash set of them)."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa
import pytest

from atlas.core.tokens import normalized_form
from query.vectors import WordTokens, word_tokens

ORACLE = """
SELECT w.word, list(DISTINCT v.token_id ORDER BY v.token_id) AS ids,
    list(DISTINCT v.token_norm ORDER BY v.token_norm) FILTER (WHERE v.token_norm IS NOT NULL)
        AS norms
FROM (SELECT unnest(?) AS word, unnest(?) AS norm) w
JOIN vocab v ON v.token_norm = w.norm OR v.token_display = w.word GROUP BY w.word
"""
VOCAB = pa.table(
    {
        "token_id": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        "token_norm": ["fire", "fire", "fire", "water", None, "火", "é", "e\u0301", "", "ß"],
        "token_display": ["fire", "Fire", "##fire", "-water", "fire", "火", "é", "é", "", "SS"],
    }
)


class _Vocabulary:
    """The one thing ``word_tokens`` asks of a reader."""

    def vocabulary(self, model_id: str) -> pa.Table:
        return VOCAB


def _oracle(words: list[str]) -> dict[str, WordTokens]:
    con = duckdb.connect()
    con.register("vocab", VOCAB)
    rows: list[dict[str, Any]] = (
        con.sql(ORACLE, params=[words, [normalized_form(w) for w in words]])
        .to_arrow_table()
        .to_pylist()
    )
    return {r["word"]: WordTokens(r["ids"], r["norms"] or []) for r in rows}


@pytest.mark.parametrize(
    "words",
    [["fire"], ["FIRE", "water"], ["##fire"], ["-water"], ["火", "é", "e\u0301"], ["ß", "SS"],
     ["nothing"], ["fire", "fire"], [" fire "],
     ["fire", "water", "火", "é", "ß", "nothing", "-water"]],  # past FEW_VALUES: a hash set
)  # fmt: skip
def test_words_find_the_tokens_the_sql_join_found(words: list[str]) -> None:
    assert word_tokens(_Vocabulary(), "m", words) == _oracle(words)  # type: ignore[arg-type]


def test_a_token_without_a_normalized_form_is_found_as_shown() -> None:
    """Token 4 has no normalized form (null) and shows as ``fire``: the null of its comparison
    must not hide the match of its display."""
    assert 4 in word_tokens(_Vocabulary(), "m", ["fire"])["fire"].ids  # type: ignore[arg-type]
