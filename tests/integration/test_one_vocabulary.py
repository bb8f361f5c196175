"""Issue 22: one definition of every query's parameters, one vocabulary in Python, the CLI and
HTTP, errors that name their parameter, no CLI flag in library strings, ``--version`` and
``--format`` with the id first.

The oracles are independent of the code that generates the interfaces: Python's signatures
come from ``inspect``, the CLI's options from click's own command objects and ``--help``, and
HTTP's parameters from the OpenAPI document FastAPI writes.
"""

from __future__ import annotations

import ast
import csv
import importlib.metadata
import inspect
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from pydantic.fields import FieldInfo

import atlas
from atlas.api import Atlas
from atlas.cli.main import all_commands, cli
from atlas.errors import AtlasError
from atlas.params import (
    MAX_SQL_ROWS,
    MatrixCardParams,
    SearchParams,
    SpectrumParams,
    SqlParams,
    TraceParams,
)
from atlas.server.app import create_app
from tests.support.helpers import assert_one_error_line, run_cli

ROOT = Path(__file__).resolve().parents[2]

# query: (its model, the Python method, the CLI command, the HTTP GET path)
QUERIES: dict[str, tuple[type[BaseModel], str, str, str]] = {
    "search": (SearchParams, "search", "search", "/api/search"),
    "trace": (TraceParams, "trace", "trace", "/api/directions/{direction_id}/trace"),
    "spectrum": (SpectrumParams, "spectrum", "spectrum", "/api/spectrum"),
    "sql": (SqlParams, "sql", "sql", "/api/sql"),
    "card": (MatrixCardParams, "card", "show", "/api/matrix"),
}
# Bounds the server adds to what a Python caller may ask: one SQL answer holds at most
# MAX_SQL_ROWS rows over HTTP (docs/server.md), where Python and the CLI read every row.
SERVER_BOUNDS = {("sql", "max_rows"): {"maximum": MAX_SQL_ROWS}}


@pytest.fixture(scope="module")
def client(minilm_atlas: Path) -> Iterator[TestClient]:
    with TestClient(create_app(str(minilm_atlas))) as c:
        yield c


def _bounds(field: FieldInfo) -> dict[str, float]:
    """A field's bounds under OpenAPI's names."""
    names = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum"}
    found = {}
    for item in field.metadata:
        kind = type(item).__name__.lower()
        if kind in names:
            found[names[kind]] = getattr(item, kind)
    return found


def _http_parameters(path: str) -> dict[str, dict[str, Any]]:
    """``name -> {default, minimum, ...}`` of one GET endpoint's query parameters, read from
    the OpenAPI document (a nullable one's bounds sit in its ``anyOf``)."""
    spec = _openapi()
    found = {}
    for param in spec["paths"][path]["get"]["parameters"]:
        if param["in"] != "query":
            continue
        schema = param["schema"]
        flat = dict(schema)
        for option in schema.get("anyOf", []):
            flat.update({k: v for k, v in option.items() if k != "type"})
        found[param["name"]] = {"required": param.get("required", False), **flat}
    return found


_SPEC: dict[str, Any] = {}


def _openapi() -> dict[str, Any]:
    if not _SPEC:
        _SPEC.update(_app_for_schema().openapi())
    return _SPEC


def _app_for_schema() -> Any:
    # the schema does not depend on the atlas served: any location builds it
    from fastapi import FastAPI

    from atlas.server import api

    app = FastAPI()
    app.include_router(api.router)
    return app


@pytest.mark.parametrize("query", list(QUERIES))
def test_python_cli_and_http_take_each_field_by_one_name_default_and_limit(query: str) -> None:
    model, method, command_name, path = QUERIES[query]
    signature = inspect.signature(getattr(Atlas, method)).parameters
    command = all_commands()[command_name]
    options = {p.name: p for p in command.params}
    http = _http_parameters(path)
    for name, field in model.model_fields.items():
        default = None if field.is_required() else field.default
        # Python: a keyword of the method, with the model's default
        assert name in signature, (query, name)
        if not field.is_required():
            assert signature[name].default == default, (query, name)
        # CLI: an option (or, for a required field or the search words, an argument)
        assert name in options, (query, name)
        option = options[name]
        if isinstance(option, click.Option):
            assert option.default == default, (query, name)
            for bound in _bounds(field).values():
                assert f"{bound:g}" in (option.help or ""), (query, name, option.help)
        # HTTP: a query parameter of the same name, default and bounds
        assert name in http, (query, name, sorted(http))
        assert http[name].get("default") == default or field.is_required(), (query, name)
        expected = {**_bounds(field), **SERVER_BOUNDS.get((query, name), {})}
        for key, value in expected.items():
            assert http[name].get(key) == value, (query, name, key, http[name])


def test_old_spellings_are_gone_from_python(minilm_atlas: Path) -> None:
    with atlas.open(minilm_atlas) as a:
        for old in ({"layers": 1}, {"kinds": ["ov"]}, {"heads": 1}):
            with pytest.raises(AtlasError, match="no such parameter") as refused:
                a.search("fire", **old)  # type: ignore[arg-type]
            assert refused.value.param == next(iter(old))


def test_a_list_has_one_spelling_in_every_endpoint(client: TestClient) -> None:
    spectrum = client.get("/api/spectrum", params={"model": "minilm", "kind": "ov,mlp_in"})
    assert spectrum.status_code == 200, spectrum.text
    assert {r["kind"] for r in spectrum.json()["layers"]} == {"ov", "mlp_in"}
    search = client.get("/api/search", params={"text": "fire", "kind": "ov,mlp_in", "k": 20})
    assert search.status_code == 200, search.text
    assert {h["kind"] for h in search.json()["hits"]} <= {"ov", "mlp_in"}
    spec = _openapi()["paths"]
    for path in ("/api/search", "/api/spectrum", "/api/directions/{direction_id}/trace"):
        (kind,) = [p for p in spec[path]["get"]["parameters"] if p["name"] == "kind"]
        assert "array" not in json.dumps(kind["schema"]), path  # text, never a repeated value


# (query, CLI arguments, Python call, HTTP GET, the parameter, the bad value)
BAD = [
    (["search", "fire"], lambda a, v: a.search("fire", layer=v),
     "/api/search?text=fire", "layer", "abc"),
    (["search", "fire"], lambda a, v: a.search("fire", k=v), "/api/search?text=fire", "k", "0"),
    (["search", "fire"], lambda a, v: a.search("fire", kind=v),
     "/api/search?text=fire", "kind", "ov,attention"),
    (["trace", "432"], lambda a, v: a.trace(432, hops=v),
     "/api/directions/432/trace?limit=5", "hops", "9"),
    (["spectrum", "minilm"], lambda a, v: a.spectrum("minilm", jump_factor=v),
     "/api/spectrum?model=minilm", "jump_factor", "0.5"),
    (["sql", "SELECT 1"], lambda a, v: a.sql("SELECT 1", max_rows=v),
     "/api/sql?query=SELECT+1", "max_rows", "0"),
]  # fmt: skip


@pytest.mark.parametrize(("cli_args", "call", "url", "param", "value"), BAD)
def test_a_bad_value_is_the_same_error_everywhere_naming_its_parameter(
    minilm_atlas: Path, client: TestClient, cli_args: list[str], call: Any, url: str,
    param: str, value: str,
) -> None:  # fmt: skip
    with atlas.open(minilm_atlas) as a, pytest.raises(AtlasError) as refused:
        call(a, value)
    error = refused.value
    assert error.param == param and str(error).startswith(f"{param}: ")
    problem = str(error).removeprefix(f"{param}: ")

    flag = "-k" if param == "k" else "--" + param.replace("_", "-")
    result = run_cli("--atlas", minilm_atlas, *cli_args, flag, value)
    assert assert_one_error_line(result) == f"Error: {flag}: {problem}"
    assert result.returncode == 2  # a usage error, as click's own

    response = client.get(f"{url}&{param}={value}")
    assert response.status_code == 400
    body = response.json()
    assert body["param"] == param and body["error"] == str(error) and body["status"] == 400


def test_the_status_comes_from_the_error_type(client: TestClient) -> None:
    unknown = client.get("/api/directions/999999999")
    assert unknown.status_code == 404 and unknown.json()["status"] == 404
    no_model = client.get("/api/search", params={"text": "fire", "model": "nope"})
    assert no_model.status_code == 404
    assert "no model 'nope'" in no_model.json()["error"]
    # the server names no isinstance chain: each error type says its status
    server = (ROOT / "atlas" / "server").glob("*.py")
    assert not any("isinstance(exc, NotFound)" in p.read_text() for p in server)


def test_search_errors_name_parameters_not_flags(minilm_atlas: Path, client: TestClient) -> None:
    with atlas.open(minilm_atlas) as a, pytest.raises(AtlasError) as refused:
        a.search()
    assert "`text`, `direction` or `vector`" in str(refused.value)
    response = client.get("/api/search")
    assert response.status_code == 400 and "--" not in response.json()["error"]
    line = assert_one_error_line(run_cli("--atlas", minilm_atlas, "search"))
    assert "WORDS, --direction or --vector" in line


def _string_literals(path: Path) -> Iterator[tuple[int, str]]:
    """The string constants of a module, its docstrings left out (they document code; the
    strings are what users read)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_library_or_http_string_names_a_cli_flag() -> None:
    files = [ROOT / "atlas" / name for name in ("api.py", "params.py", "errors.py", "writing.py")]
    for folder in ("query", "ingest", "atlas/core", "atlas/models", "atlas/server"):
        files += sorted((ROOT / folder).rglob("*.py"))
    flags = _cli_flags()
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in files
        for line, text in _string_literals(path)
        if set(re.findall(r"--[a-z][a-z-]*", _not_ours(text))) & flags
        and (path.name, text) != ("options.py", "--name")  # the job file's word, parsed
    ]
    assert found == []


def _not_ours(text: str) -> str:
    """``text`` without what spells a flag but is not one of a command: a job file's own
    syntax (ingest/options.py reads it) and Ray's command that starts a cluster."""
    return text.replace("MODEL --name ID", "").replace("`ray start --head`", "")


def _cli_flags() -> set[str]:
    """Every long option of every svd-atlas command."""
    commands = [cli, *all_commands().values()]
    return {o for c in commands for p in c.params for o in p.opts if o.startswith("--")}


def test_the_static_check_would_catch_a_flag(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""Use --help."""\n\ndef f():\n    raise ValueError("pass --write")\n')
    assert [text for _, text in _string_literals(module)] == ["pass --write"]


def test_version_is_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"svd-atlas, version {importlib.metadata.version('svd-atlas')}"


# (command, the id column)
LISTINGS = [
    (["search", "fire", "-k", "3"], "direction_id"),
    (["trace", "432", "--min-cos", "0.2", "--limit", "5"], "direction_id"),
    (["models"], "model_id"),
    (["spectrum", "minilm"], "model_id"),
    (["spectrum", "minilm", "--heads"], "model_id"),
    (["sql", "SELECT direction_id, layer FROM directions LIMIT 3"], "direction_id"),
]


@pytest.mark.parametrize(("args", "id_column"), LISTINGS, ids=[" ".join(a) for a, _ in LISTINGS])
def test_listings_give_json_and_csv_with_the_id_first(
    minilm_atlas: Path, args: list[str], id_column: str
) -> None:
    as_json = run_cli("--atlas", minilm_atlas, *args, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    if isinstance(rows, dict):  # spectrum: a record whose layers (and matrices) are the rows
        rows = rows["matrices"] or rows["layers"]
        assert list(json.loads(as_json.stdout))[0] == "model_id"
    else:
        assert rows and list(rows[0])[0] == id_column
    as_csv = run_cli("--atlas", minilm_atlas, *args, "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    table = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert table[0][0] == id_column and len(table) > 1
    as_table = run_cli("--atlas", minilm_atlas, *args, "--format", "table")
    assert as_table.returncode == 0, as_table.stderr
    header = next(line for line in as_table.stdout.splitlines() if line.strip())
    if args[0] != "trace":  # the trace table sits under headings of model and layer
        assert header.split()[0] == id_column


def test_cards_give_text_or_json(minilm_atlas: Path) -> None:
    card = run_cli("--atlas", minilm_atlas, "show", "432", "--format", "json")
    assert json.loads(card.stdout)["direction_id"] == 432
    text = run_cli("--atlas", minilm_atlas, "show", "432", "--format", "text")
    assert text.stdout.startswith("direction 432: minilm")
    refused = run_cli("--atlas", minilm_atlas, "show", "432", "--format", "csv")
    assert refused.returncode == 2 and "csv" in refused.stderr
    matrix = run_cli(
        "--atlas", minilm_atlas, "show", "minilm", "0", "0", "--top", "2", "--offset", "3",
        "--format", "json",
    )  # fmt: skip
    directions = json.loads(matrix.stdout)["directions"]
    assert [d["sv_index"] for d in directions] == [3, 4]


def test_docs_cli_md_tables_are_the_models() -> None:
    from atlas.cli.params import REFERENCE, update_reference

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert update_reference(page) == page, "write_reference('docs/cli.md') updates it"
    for command, (model, arguments) in REFERENCE.items():
        assert f"<!-- options: {command} -->" in page, command
        for name, field in model.model_fields.items():
            if not field.is_required() and name not in arguments:
                flag = "-k" if name == "k" else "--" + name.replace("_", "-")
                assert f"| `{flag}" in page, (command, flag)


def test_a_page_names_what_is_wrong_with_a_parameter(client: TestClient) -> None:
    page = client.get("/search", params={"text": "fire", "layer": "abc"})
    assert page.status_code == 400
    assert "layer: bad layer range &#39;abc&#39;" in page.text  # escaped, as every value
    assert "Extra inputs" not in page.text
