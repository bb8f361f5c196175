"""Small pure pieces: the statement check, strict JSON, escaping, the contract and filters."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pyarrow as pa
import pytest

import atlas
from atlas.cli.output import dumps
from atlas.core.contract import JUDGED_SIDE, KINDS, SIDES_OF, TABLES
from atlas.core.errors import AtlasError, BadParameter, UnsupportedFormat
from atlas.core.formats import require_format
from atlas.core.jsondata import jsonable, printable, table_cell
from atlas.core.sqlguard import check_statement
from atlas.params import FilterParams, validate
from query.filters import Filters


@pytest.mark.parametrize(
    "statement",
    [
        "EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'",
        "EXPLAIN /* a comment */ ANALYSE DROP VIEW directions",
        "explain analyze create table t as select 1",
        "EXPLAIN (FORMAT json) ANALYZE INSERT INTO t VALUES (1)",
        "COPY models TO 'x'",
        "ATTACH 'x' AS y",
        "SELECT 1; SELECT 2",
        "PRAGMA version",
        "SET threads = 1",
    ],
)
def test_statements_that_are_not_queries_are_refused(statement: str) -> None:
    with pytest.raises(AtlasError):
        check_statement(statement)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "EXPLAIN SELECT 1",
        "EXPLAIN ANALYZE SELECT 1",
        "EXPLAIN (FORMAT json) SELECT 1",
        "FROM directions LIMIT 1",
        "PIVOT matrices ON kind IN ('ov', 'mlp_in') USING count(*)",
    ],
)
def test_queries_pass(statement: str) -> None:
    check_statement(statement)


def test_a_pivot_without_its_values_says_how_to_write_it() -> None:
    """DuckDB runs it as two statements (the first finds the values), which sql refuses."""
    with pytest.raises(AtlasError, match=r"list the values, as in PIVOT t ON kind IN"):
        check_statement("PIVOT matrices ON kind USING count(*)")


def test_writes_pass_only_when_asked_for() -> None:
    with pytest.raises(AtlasError, match="`write`"):
        check_statement("CREATE TABLE t AS SELECT 1")
    check_statement("CREATE TABLE t AS SELECT 1", write=True)


def test_json_is_strict_and_readable() -> None:
    value = {
        "nan": math.nan,
        "inf": -math.inf,
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "gap": dt.timedelta(hours=1, seconds=0.5),
        "months": pa.scalar((1, 2, 3_000_000_000), pa.month_day_nano_interval()).as_py(),
        "list": [1.0, math.nan],
    }
    text = dumps(value)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "nan": None,
        "inf": None,
        "when": "2026-01-02T03:04:05+00:00",
        "gap": "PT1H0.5S",
        "months": "P1M2DT3S",
        "list": [1.0, None],
    }
    assert jsonable(dt.timedelta(0)) == "PT0S"


def test_control_characters_are_escaped_in_text() -> None:
    assert printable("a\x1b[31mb\x07") == "a\\x1b[31mb\\x07"
    assert table_cell(["ok", "\x9bx"]) == "ok, \\x9bx"
    # one value is one line, whatever it holds (a path with a newline, a token "\\n")
    assert printable("tab\tand\nnewline é ü 中") == "tab\\x09and\\x0anewline é ü 中"


def test_the_contract_names_every_declared_table() -> None:
    from atlas.core.schema import build_metadata

    assert tuple(build_metadata(None).tables) == TABLES
    assert set(SIDES_OF) == set(JUDGED_SIDE) == set(KINDS)
    assert all(JUDGED_SIDE[k] in SIDES_OF[k] for k in KINDS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": ["xx"]},
        {"kind": "ov,,mlp_in"},
        {"layer": "abc"},
        {"layer": (5, 2)},
        {"layer": (-1, None)},
        {"layer": (None, "x")},
        {"layer": (True, 3)},
        {"layer": (1, 2, 3)},
        {"head": -1},
        {"head": ["x"]},
        {"side": "up"},
        {"max_sv_index": -3},
        {"max_sv_index": True},
        {"min_sigma": math.nan},
        {"min_sigma": "many"},
    ],
)
def test_bad_filters_are_refused_naming_the_parameter(kwargs: dict[str, object]) -> None:
    with pytest.raises(AtlasError) as refused:
        validate(FilterParams, **kwargs)
    assert refused.value.param == next(iter(kwargs))


def test_filters_from_python_values_and_text_alike() -> None:
    expected = Filters(kinds=("ov", "mlp_in"), layers=(3, 4), heads=(2, 5))
    assert validate(FilterParams, kind=["ov", "mlp_in"], layer=3, head=[2, 5]).filters() == expected
    assert validate(FilterParams, kind="ov,mlp_in", layer="3", head="2,5").filters() == expected
    assert validate(FilterParams, layer=(2, None)).filters().layers == (2, None)
    assert validate(FilterParams, layer="2:").filters().layers == (2, None)
    assert validate(FilterParams, layer=":4").filters().layers == (0, 4)
    assert validate(FilterParams, layer=(None, 4)).filters().layers == (0, 4)  # as ":4"
    twice = validate(FilterParams, model="a,b,a", kind=["ov", "ov,mlp_in"], head="2,2")
    assert (twice.model, twice.kind, twice.head) == ("a,b", "ov,mlp_in", "2")  # each once
    assert not validate(FilterParams).filters().active


@pytest.mark.parametrize("version", ["1", 1.0, None, True])
def test_format_versions_must_be_whole_numbers(version: object) -> None:
    with pytest.raises(AtlasError, match="format_version"):
        require_format({"format": "x", "format_version": version}, "x", 2, "f", "bundle", "redo")


def test_a_format_version_is_read_from_the_oldest_to_the_current() -> None:
    for version in (1, 2, 3):
        data = {"format": "x", "format_version": version}
        assert require_format(data, "x", 3, "f", "bundle", "redo") == version
    with pytest.raises(UnsupportedFormat, match="newer svd-atlas .*versions 1 to 3.* upgrade"):
        require_format({"format": "x", "format_version": 4}, "x", 3, "f", "bundle", "redo")
    for version in (0, -2):
        with pytest.raises(UnsupportedFormat, match=f"too old .*version {version}.*: redo$"):
            data = {"format": "x", "format_version": version}
            require_format(data, "x", 3, "f", "bundle", "redo")


def test_a_statement_left_aborted_by_a_ctrl_c_does_not_refuse_the_next() -> None:
    """Ctrl-C can raise in Python after DuckDB stopped a statement and before its ROLLBACK ran
    (seen once in the suite): the session's transaction is then aborted, and DuckDB refuses
    every later statement until it is rolled back."""
    import duckdb

    from atlas.core.sqlguard import run_statement

    con = duckdb.connect()
    con.execute("BEGIN TRANSACTION")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT error('stopped')")
    with pytest.raises(duckdb.Error, match="transaction is aborted"):
        con.execute("SELECT 1")
    assert run_statement(con, "SELECT 42 AS x", memory_limit=2 * 10**9).to_pylist() == [{"x": 42}]


@pytest.mark.parametrize(
    ("quoted", "shown"),
    [
        ("Traceback (most recent call last):\n  File \"x\", line 1\nPermissionError: a/b.parquet: "
         "a link to a file outside the atlas\n\nLINE 1: CREATE VIEW v AS ...\n   ^^^",
         "a/b.parquet: a link to a file outside the atlas"),
        ("IO Error: Traceback (most recent call last):\n  File \"s.py\", line 3, in send\n"
         "botocore.exceptions.EndpointConnectionError: Could not connect to \"http://h/x\"\n",
         "EndpointConnectionError: Could not connect to \"http://h/x\""),
        ("Traceback (most recent call last):\n  File \"f.py\", line 9\nAssertionError\n",
         "AssertionError"),
        ("Binder Error: column x not found\n\nLINE 1: SELECT x\n        ^",
         "Binder Error: column x not found LINE 1: SELECT x"),
    ],
)  # fmt: skip
def test_a_python_failure_duckdb_quotes_is_its_own_line(quoted: str, shown: str) -> None:
    """A Parquet tree's file system is Python: DuckDB quotes its failure with the traceback."""
    import duckdb

    from atlas.core.sqlguard import engine_message

    assert engine_message(duckdb.Error(quoted)) == shown


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        (["a" * 101 + ", fire"], "a token of 101 characters; a token is at most 100"),
        (["fire, \ud800"], r"'\\ud800' is not printable text"),
        (["fire, flame\u202e"], "is not printable text"),
        ([5], "a token list is a comma-separated string or a list of strings, not 5"),
        ([["fire", 3]], "a list of strings"),
        (["fire"], "the token list needs 2 to 100 tokens, not 1"),
        (["fire, flame", "smoke"], "token list 2 needs 2 to 100 tokens"),
    ],
)
def test_bad_token_lists_are_refused_before_anything_is_scored(
    lists: list[object], message: str
) -> None:
    """Each string the judge encodes is kept in a cache every process on the machine shares:
    one 100,000-character token made it 15 GB (and a server reading it ran out of memory)."""
    with pytest.raises(BadParameter, match=message):
        atlas.coherence(*lists)  # type: ignore[arg-type]


def test_the_coherence_command_refuses_bad_text_in_one_line(tmp_path: Path) -> None:
    from tests.support.helpers import assert_one_error_line, run_cli

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fire, \xff\xfe\n")
    for args, said, status in (
        (["fire, \udcff\udcfe"], "is not printable text", 2),  # bytes no encoding decodes
        (["--file", bad], "is not UTF-8 text", 1),
        (["fire"], "the token list needs 2 to 100 tokens, not 1", 2),
        ([], "give either a token list or --file FILE", 2),
    ):
        result = run_cli("coherence", *args)
        assert said in assert_one_error_line(result) and result.returncode == status, args
