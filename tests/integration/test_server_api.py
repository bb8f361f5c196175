"""The JSON API through the ASGI test client: every endpoint equals the library (and the CLI's
--format json) for the same call, and every error is one JSON message with the right status."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

import atlas
from atlas.core.jsondata import jsonable
from atlas.server.app import MAX_BODY, create_app
from tests.support.helpers import run_cli


@pytest.fixture(scope="module")
def client(minilm_atlas: Path) -> Iterator[TestClient]:
    with TestClient(create_app(str(minilm_atlas))) as c:
        yield c


@pytest.fixture(scope="module")
def handle(minilm_atlas: Path) -> Iterator[atlas.Atlas]:
    with atlas.open(minilm_atlas) as a:
        yield a


def ok(client: TestClient, url: str, **kw: Any) -> Any:
    response = client.request(kw.pop("method", "GET"), url, **kw)
    assert response.status_code == 200, response.text
    return response.json()


def same(value: Any) -> Any:
    """What the API's strict JSON makes of a library value."""
    return json.loads(json.dumps(jsonable(value)))


def test_models_and_health(client: TestClient, handle: atlas.Atlas) -> None:
    assert ok(client, "/api/models") == same(handle.models())
    health = ok(client, "/api/health")
    assert health["status"] == "ok" and health["models"] == ["minilm"]


@pytest.mark.parametrize(
    ("query", "call"),
    [
        ("text=fire&k=5", {"text": "fire", "k": 5}),
        ("text=fire+flame&kind=ov&layer=0:3&side=read&k=7",
         {"text": "fire flame", "kind": ["ov"], "layer": (0, 3), "side": "read", "k": 7}),
        ("text=water&kind=mlp_in,mlp_out&max_sv_index=50&min_sigma=1&min_score=0.1",
         {"text": "water", "kind": ["mlp_in", "mlp_out"], "max_sv_index": 50, "min_sigma": 1.0,
          "min_score": 0.1}),
        ("direction=432&k=4&head=1,6", {"direction": 432, "k": 4, "head": [1, 6]}),
        ("text=fire&space=token&k=3", {"text": "fire", "space": "token", "k": 3}),
    ],
)  # fmt: skip
def test_search_equals_the_library(
    client: TestClient, handle: atlas.Atlas, query: str, call: dict[str, Any]
) -> None:
    got = ok(client, f"/api/search?{query}")
    text = call.pop("text", None)
    expected = handle.search(text, **call)
    assert got["hits"] == same([h.to_dict() for h in expected]) and got["hits"]
    assert got["notes"] == expected.notes


def test_a_searchs_notes_go_in_its_response_not_to_the_servers_stderr(minilm_atlas: Path) -> None:
    """Warned, they would be a line on stderr for every request (filling a log, or a pipe
    nobody reads, which then blocks the server)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=atlas.core.errors.AtlasWarning)
        with TestClient(create_app(str(minilm_atlas))) as c:
            assert ok(c, "/api/search?text=fire+zzqqxx")["notes"] == [
                "not in minilm's vocabulary: zzqqxx"
            ]
            assert "zzqqxx" in c.get("/search?text=fire+zzqqxx").text  # the page shows it


def test_search_fields_are_the_clis(client: TestClient, minilm_atlas: Path) -> None:
    cli = run_cli("--atlas", minilm_atlas, "search", "fire", "-k", "6", "--format", "json")
    assert cli.returncode == 0, cli.stderr
    assert ok(client, "/api/search?text=fire&k=6")["hits"] == json.loads(cli.stdout)
    trace = run_cli("--atlas", minilm_atlas, "trace", "432", "--min-cos", "0.2", "--format", "json")
    api = ok(client, "/api/directions/432/trace?min_cos=0.2")["steps"]
    assert api == json.loads(trace.stdout)
    card = run_cli("--atlas", minilm_atlas, "show", "minilm", "3", "3", "--format", "json")
    assert ok(client, "/api/matrix?model=minilm&layer=3&head=3") == json.loads(card.stdout)


def test_vector_search(client: TestClient, handle: atlas.Atlas) -> None:
    vector = np.random.default_rng(3).standard_normal(384).astype(np.float32)
    got = ok(client, "/api/search", method="POST", json={"vector": vector.tolist(), "k": 6})
    assert got["hits"] == same([h.to_dict() for h in handle.search(vector=vector, k=6)])
    filtered = ok(
        client, "/api/search", method="POST",
        json={"vector": vector.tolist(), "k": 3, "kind": "ov", "layer": "2:"},
    )  # fmt: skip
    expected = handle.search(vector=vector, k=3, kind=["ov"], layer=(2, None))
    assert filtered["hits"] == same([h.to_dict() for h in expected])


def test_cards_trace_and_spectrum(client: TestClient, handle: atlas.Atlas) -> None:
    assert ok(client, "/api/directions/432") == same(handle.card(432))
    steps = ok(client, "/api/directions/432/trace?min_cos=0.2&hops=2&same_model=true")["steps"]
    assert steps == same(
        [s.to_dict() for s in handle.trace(432, min_cos=0.2, hops=2, same_model=True)]
    )
    page = ok(client, "/api/matrix?model=minilm&layer=2&head=mlp_in&top=4&offset=10")
    assert page == same(handle.card("minilm", 2, "mlp_in", top=4, offset=10))
    assert [d["sv_index"] for d in page["directions"]] == [10, 11, 12, 13]
    spectrum = ok(client, "/api/spectrum?model=minilm&kind=ov&heads=true")
    spectra = handle.spectrum("minilm", kind=["ov"])
    assert spectrum["layers"] == same([r.as_dict() for r in spectra.layers])
    assert spectrum["matrices"] == same(spectra.matrices)


def test_sql_json_csv_and_parquet(client: TestClient, handle: atlas.Atlas) -> None:
    query = "SELECT direction_id, kind, sigma, vector[1:3] AS v FROM directions ORDER BY 1"
    expected = handle.sql(query)
    got = ok(client, "/api/sql", params={"query": query, "max_rows": 25})
    assert got["columns"] == expected.column_names and got["truncated"] is True
    assert got["rows"] == same(expected.slice(0, 25).to_pylist()) and got["row_limit"] == 25
    posted = ok(client, "/api/sql", method="POST", json={"query": query, "max_rows": 10})
    assert posted["rows"] == got["rows"][:10]
    response = client.get("/api/sql", params={"query": query, "max_rows": 100, "format": "parquet"})
    assert response.headers["x-truncated"] == "true"
    table = pq.read_table(io.BytesIO(response.content))
    assert table.equals(expected.slice(0, 100))
    csv = client.get("/api/sql", params={"query": query, "max_rows": 3, "format": "csv"})
    lines = csv.text.splitlines()
    assert lines[0] == "direction_id,kind,sigma,v" and len(lines) == 4
    first = expected.slice(0, 1).to_pylist()[0]
    assert lines[1].split(",")[0] == str(first["direction_id"])


def error(client: TestClient, method: str, url: str, status: int, **kw: Any) -> str:
    response = client.request(method, url, **kw)
    assert response.status_code == status, (url, response.status_code, response.text)
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in response.text and "\n" not in body["error"]
    return str(body["error"])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/api/search?text=fire&k=0", "k: Input should be greater than or equal to 1"),
        ("/api/search?text=fire&k=1001", "k: Input should be less than or equal to 1000"),
        ("/api/search?text=fire&k=ten", "k: Input should be a valid integer"),
        ("/api/search?text=fire&layer=x", "layer: bad layer range 'x'"),
        ("/api/search?text=fire&kind=attention", "unknown kind"),
        (
            "/api/search?text=fire&side=middle",
            "side: Input should be 'read', 'write', 'query' or 'key'",
        ),
        ("/api/search?text=fire&min_score=2", "min_score: Input should be less than or equal to 1"),
        ("/api/search?text=fire&min_sigma=nan", "min_sigma"),
        ("/api/search?text=fire&frobnicate=1", "frobnicate: no such parameter"),
        ("/api/search?text=" + "x" * 501, "text: String should have at most 500 characters"),
        ("/api/search", "give exactly one of"),
        ("/api/search?text=fire&direction=5", "give exactly one of"),
        ("/api/directions/432/trace?hops=6", "hops: Input should be less than or equal to 5"),
        ("/api/directions/432/trace?min_cos=0", "min_cos: Input should be greater than 0"),
        ("/api/directions/-1", "direction_id: Input should be greater than or equal to 0"),
        ("/api/matrix?model=minilm&layer=1&head=mlp_up", "head: String should match"),
        ("/api/sql?query=DROP+VIEW+directions", "DROP is not allowed"),
        ("/api/sql?query=CREATE+TABLE+t+AS+SELECT+1", "(the server never writes)"),
        ("/api/sql?query=COPY+directions+TO+'/tmp/x.csv'", "not allowed"),
        ("/api/sql?query=SELEC+1", "syntax error"),
        (
            "/api/sql?query=SELECT+1&max_rows=100001",
            "max_rows: Input should be less than or equal to",
        ),
        ("/api/sql?query=SELECT+1&format=xlsx", "format: Input should be"),
    ],
)
def test_bad_input_is_400(client: TestClient, url: str, message: str) -> None:
    assert message in error(client, "GET", url, 400)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/api/directions/987654321", "no direction 987654321"),
        ("/api/directions/987654321/trace", "no direction 987654321"),
        ("/api/search?direction=987654321", "no direction 987654321"),
        ("/api/matrix?model=gpt-9&layer=0&head=0", "no model 'gpt-9'"),
        (
            "/api/matrix?model=minilm&layer=99&head=0",
            "layer: 'minilm' has no layer 99 (layers 0 to 5)",
        ),
        ("/api/spectrum?model=..%2F..%2Fetc%2Fpasswd", "no model '../../etc/passwd'"),
        ("/api/search?text=fire&model=nope", "no model 'nope'"),
        ("/api/nothing-here", "not found"),
        ("/api/directions/..%2F..%2Fcatalog.json", "not found"),
    ],
)
def test_unknown_ids_are_404(client: TestClient, url: str, message: str) -> None:
    assert message in error(client, "GET", url, 404)


def test_bodies_vectors_and_methods(client: TestClient, handle: atlas.Atlas) -> None:
    wrong_width = client.post("/api/search", json={"vector": [1.0] * 10}).json()
    assert wrong_width["param"] == "vector" and "384" in wrong_width["error"], wrong_width
    assert "vector" in error(client, "POST", "/api/search", 400, json={"vector": [1.0, "x"]})
    assert error(client, "POST", "/api/search", 400, content=b"{not json",
                 headers={"content-type": "application/json"})  # fmt: skip
    not_json = client.post("/api/search", content=b"{not json",
                           headers={"content-type": "application/json"})  # fmt: skip
    assert not_json.json()["param"] is None  # not the character offset of the JSON error
    # finite values past float32's range are a direction like any other (scaled, not inf)
    vector = np.random.default_rng(4).standard_normal(384)
    huge = ok(client, "/api/search", method="POST", json={"vector": (vector * 1e300).tolist()})
    assert huge["hits"] == same([h.to_dict() for h in handle.search(vector=vector)])
    too_many = {"vector": [0.0] * 65_537}
    assert "65536" in error(client, "POST", "/api/search", 400, json=too_many)
    huge = b"[" + b"0," * (MAX_BODY // 2) + b"0]"
    assert "over" in error(client, "POST", "/api/search", 413, content=huge,
                           headers={"content-type": "application/json"})  # fmt: skip
    assert error(client, "DELETE", "/api/models", 405) == "method not allowed"
    assert error(client, "POST", "/api/models", 405) == "method not allowed"


def test_openapi_describes_every_endpoint(client: TestClient) -> None:
    spec = ok(client, "/openapi.json")
    paths = set(spec["paths"])
    assert {"/api/health", "/api/models", "/api/search", "/api/directions/{direction_id}",
            "/api/directions/{direction_id}/trace", "/api/matrix", "/api/spectrum",
            "/api/sql"} <= paths  # fmt: skip
    assert set(spec["paths"]["/api/search"]) == {"get", "post"}
    assert not any(p.startswith(("/search", "/model", "/sql", "/directions")) for p in paths)
    assert client.get("/docs").status_code == 404  # its scripts would come from a CDN


def test_a_runaway_request_is_stopped_and_the_server_keeps_serving(minilm_atlas: Path) -> None:
    import time

    runaway = "SELECT count(*) FROM range(1000000000000) a, range(1000000000000) b"
    with TestClient(create_app(str(minilm_atlas), timeout=1.0)) as slow:
        started = time.monotonic()
        message = error(slow, "GET", f"/api/sql?query={runaway}", 504)
        assert "time limit of 1 s" in message and time.monotonic() - started < 10
        for _ in range(3):  # the cancelled work freed its thread: later requests are served
            assert ok(slow, "/api/sql?query=SELECT+42+AS+x")["rows"] == [{"x": 42}]


def test_sql_results_of_any_type_and_shape(client: TestClient) -> None:
    """Values Python cannot hold are shown as text, not a 500; columns of one name keep their
    values; a type Parquet cannot store is one 400; CSV is whole or an error, never cut."""
    odd = "SELECT 'infinity'::DATE AS d, '294247-01-10'::TIMESTAMP AS t, 1 AS a, 2 AS a"
    got = ok(client, "/api/sql", params={"query": odd})
    assert got["columns"] == ["d", "t", "a", "a_2"]
    row = got["rows"][0]
    assert row["a"] == 1 and row["a_2"] == 2 and "out of range" in row["d"]
    csv = client.get("/api/sql", params={"query": odd, "format": "csv"})
    assert csv.status_code == 200 and csv.text.splitlines()[0] == "d,t,a,a_2"
    assert csv.text.splitlines()[1].endswith(",1,2")
    parquet = client.get("/api/sql", params={"query": "SELECT 1 AS a, 2 AS a", "format": "parquet"})
    assert pq.read_table(io.BytesIO(parquet.content)).column_names == ["a", "a_2"]
    for q in ("SELECT INTERVAL 1 DAY AS i", "SELECT union_value(num := 2) AS u"):
        message = error(client, "GET", "/api/sql", 400, params={"query": q, "format": "parquet"})
        assert "cannot be written as Parquet" in message
    page = client.get("/sql", params={"query": odd})
    assert page.status_code == 200 and "a_2" in page.text


def test_sql_results_are_bounded_in_bytes(client: TestClient) -> None:
    from atlas.server.api import MAX_SQL_BYTES

    big = "SELECT repeat('x', 3000) AS s FROM range(100000)"  # 300 MB if it were not cut
    response = client.get("/api/sql", params={"query": big, "max_rows": 100_000, "format": "csv"})
    assert response.status_code == 200 and response.headers["x-truncated"] == "true"
    assert len(response.content) < 2 * MAX_SQL_BYTES
    assert ok(client, "/api/health")["status"] == "ok"
    # one value larger than a result may be is refused before it becomes Python objects
    # (about ten times its size: a list of every vector over a cross join took gigabytes)
    huge = "SELECT list(repeat('x', 3000)) AS s FROM range(20000)"  # 60 MB in one cell
    refused = error(client, "GET", "/api/sql?" + urlencode({"query": huge}), 400)
    assert "the result's first row holds 57 MB, more than a result may (32 MB)" in refused


def test_hostile_uploads_and_bodies(client: TestClient) -> None:
    header = io.BytesIO()  # a header that declares 1e11 values, and no data
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (100_000_000_000,)}
    )
    zipped = io.BytesIO()
    np.savez(zipped, x=np.ones(384))
    for data, message in (
        (b"", "not a .npy file"),
        (zipped.getvalue(), "not a .npy file"),
        (header.getvalue(), "more than 65,536 values"),
    ):
        page = client.post("/search", files={"vector_file": ("v.npy", data)})
        assert page.status_code == 400 and message in page.text, page.text[:300]
    chunks = (b"x" * 65_536 for _ in range(40))  # 2.5 MiB, sent chunked (no length)
    response = client.post("/api/search", content=chunks,
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 413
    assert "script-src 'none'" in response.headers["content-security-policy"]
    page = client.post("/search", content=b"x" * (MAX_BODY + 1),
                       headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert page.status_code == 413 and page.headers["content-type"].startswith("text/html")


def test_statuses_agree_between_pages_and_the_api(client: TestClient) -> None:
    assert client.get("/search", params={"direction": 987654321}).status_code == 404
    assert client.get("/search", params={"text": "fire", "model": "nope"}).status_code == 404
    assert client.get("/directions/-1").status_code == 400
    head = client.head("/api/models")
    assert head.status_code == 200 and head.content == b""
    assert client.delete("/api/models").headers["allow"] == "GET"
    for bad in ("model=%09", "kind=,,", "head=%D9%A3", "layer=1_0"):
        assert client.get(f"/api/search?text=fire&{bad}").status_code == 400, bad
