"""The pages through the ASGI test client: each renders what the library says, user text is
escaped everywhere (a hostile model id included), uploads are data, and no page has a script."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import atlas
from atlas.server.app import create_app
from tests.support.tiny_models import ingest_loaded, tiny_gpt2

HOSTILE_ID = "<script>alert('id')</script> & \"quoted\" /x"  # HTML, quotes and a slash


@pytest.fixture(scope="module")
def hostile_atlas(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM and a tiny model whose id is hostile HTML with a slash (a parent path is no id)."""
    import shutil

    root = tmp_path_factory.mktemp("pages") / "atlas"
    shutil.copytree(minilm_atlas, root)
    ingest_loaded(root, tiny_gpt2(), HOSTILE_ID)
    return root


@pytest.fixture(scope="module")
def client(hostile_atlas: Path) -> Iterator[TestClient]:
    with TestClient(create_app(str(hostile_atlas))) as c:
        yield c


def page(client: TestClient, url: str, status: int = 200, **kw: object) -> str:
    response = client.request(str(kw.pop("method", "GET")), url, **kw)  # type: ignore[arg-type]
    assert response.status_code == status, (url, response.text[:500])
    assert response.headers["content-type"].startswith("text/html")
    text = response.text
    assert "<script" not in text.lower(), url  # pages carry no script, and let none in
    assert "Traceback" not in text
    assert "script-src 'none'" in response.headers["content-security-policy"]
    return text


def shown_as_text(text: str, value: str) -> bool:
    """``value`` is on the page as escaped text, never as markup."""
    return value not in text and value in html.unescape(text)


def test_home_lists_the_models_and_escapes_their_ids(client: TestClient) -> None:
    text = page(client, "/")
    assert shown_as_text(text, HOSTILE_ID) and ">minilm</a>" in text
    assert "/model?model=%3Cscript%3E" in text  # the id travels as a quoted parameter


def test_search_page_matches_the_library(client: TestClient, hostile_atlas: Path) -> None:
    text = page(client, "/search?text=fire&model=minilm&k=5&kind=ov")
    with atlas.open(hostile_atlas) as a:
        hits = a.search("fire", model="minilm", k=5, kind="ov")
    links = re.findall(r'<td><a href="/directions/(\d+)">', text)
    assert [int(x) for x in links] == [h.direction_id for h in hits]
    for h in hits:
        assert html.escape(h.tokens[0]) in text
    assert text.count("positive") + text.count("negative") >= len(hits)
    # a form's empty fields are no filter at all
    blank = page(client, "/search?text=fire&model=minilm&direction=&layer=&head=&max_sv_index=")
    assert re.findall(r'<td><a href="/directions/(\d+)">', blank)


@pytest.mark.parametrize(
    "query",
    [
        "<script>alert(1)</script>",
        '"><img src=x onerror=alert(1)>',
        "</textarea><b>bold</b>",
    ],
)
def test_hostile_search_text_is_shown_as_text(client: TestClient, query: str) -> None:
    text = page(client, "/search", params={"text": query, "model": "minilm"}, status=400)
    assert shown_as_text(text, query)


def test_sql_page_shows_results_escaped_with_downloads(client: TestClient) -> None:
    query = "SELECT '<b>x</b>' AS tag, 2 AS two UNION ALL SELECT '&amp;', 3"
    text = page(client, "/sql", params={"query": query, "max_rows": 1})
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
    assert "row limit 1" in text and "the statement returned more" in text
    downloads = re.findall(r'href="(/api/sql\?[^"]+)"', text)
    assert len(downloads) == 3
    csv = client.get(html.unescape(downloads[0]))
    assert csv.status_code == 200 and csv.text.splitlines() == ["tag,two", "<b>x</b>,2", "&amp;,3"]
    refused = page(client, "/sql", params={"query": "COPY directions TO '/tmp/x.csv'"}, status=400)
    assert "not allowed" in refused
    schema = page(client, "/sql")
    assert "head_summary" in schema and "directions" in schema


def test_model_grid_links_every_cell(client: TestClient, hostile_atlas: Path) -> None:
    text = page(client, "/model?model=minilm")
    cells = re.findall(r'href="/matrix\?model=minilm&amp;layer=(\d+)&amp;head=(\w+)"', text)
    with atlas.open(hostile_atlas) as a:
        # a head's cell opens its card, OV and QK circuits both
        matrices = a.sql(
            "SELECT count(*) AS n FROM matrices WHERE model_id = 'minilm' AND kind <> 'qk'"
        )
    assert len(cells) == matrices["n"][0].as_py() == 84
    assert ("3", "3") in cells and ("2", "mlp_in") in cells
    assert '<img class="plot" src="/model/spectrum.svg?model=minilm"' in text
    coherence = page(client, "/model?model=minilm&stat=top_coherence")
    assert "coherence of the top direction" in coherence
    svg = client.get("/model/spectrum.svg?model=minilm")
    assert svg.headers["content-type"] == "image/svg+xml" and svg.content.startswith(b"<?xml")
    hostile = page(client, "/model", params={"model": HOSTILE_ID})
    assert shown_as_text(hostile, HOSTILE_ID)
    page(client, "/model?model=nope", status=404)
    page(client, "/model?model=minilm&stat=volume", status=400)


def test_matrix_pages_are_paged(client: TestClient, hostile_atlas: Path) -> None:
    first = page(client, "/matrix?model=minilm&layer=2&head=mlp_in")
    second = page(client, "/matrix?model=minilm&layer=2&head=mlp_in&page=2")
    assert "page 1 of 20" in first and "page 2 of 20" in second
    assert 'rel="next"' in first and 'rel="prev"' in second
    with atlas.open(hostile_atlas) as a:
        card = a.card("minilm", 2, "mlp_in", top=20, offset=20)
    ids = [int(x) for x in re.findall(r'href="/directions/(\d+)"', second)]
    assert ids == [d["read_id"] for d in card["directions"]]
    page(client, "/matrix?model=minilm&layer=2&head=mlp_in&page=0", status=400)


def test_direction_page(client: TestClient, hostile_atlas: Path) -> None:
    text = page(client, "/directions/433?min_cos=0.2&hops=2")
    with atlas.open(hostile_atlas) as a:
        card = a.card(433)
        steps = a.trace(433, min_cos=0.2, hops=2)
    assert f'href="/directions/{card["partner_id"]}"' in text
    for token in card["tokens"][:5]:
        assert html.escape(token["token_display"]) in text
    traced = {int(x) for x in re.findall(r'<td><a href="/directions/(\d+)">', text)}
    assert {s.hit.direction_id for s in steps} <= traced
    assert "svd-atlas --atlas" in text and "trace 433 --min-cos 0.2 --hops 2" in text
    assert "No edit command here" in text  # a masked LM (the commands: the test below)
    assert "In other models" in text  # the atlas holds a second model
    page(client, "/directions/99999999", status=404)


def test_npy_upload_is_read_as_data_only(client: TestClient, hostile_atlas: Path) -> None:
    vector = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, vector)
    files = {"vector_file": ("v.npy", buffer.getvalue(), "application/octet-stream")}
    text = page(client, "/search", method="POST", files=files, data={"model": "minilm", "k": "4"})
    with atlas.open(hostile_atlas) as a:
        expected = [h.direction_id for h in a.search(vector=vector, model="minilm", k=4)]
    assert [int(x) for x in re.findall(r'<td><a href="/directions/(\d+)">', text)] == expected
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    files = {"vector_file": ("evil.npy", pickled.getvalue(), "application/octet-stream")}
    refused = page(client, "/search", method="POST", files=files, data={"model": "minilm"},
                   status=400)  # fmt: skip
    assert "must hold real numbers, not object" in refused  # refused from its header
    junk = {"vector_file": ("x.npy", b"\x93NUMPY garbage", "application/octet-stream")}
    page(client, "/search", method="POST", files=junk, data={"model": "minilm"}, status=400)


def test_static_files_and_paths_stay_inside_the_package(client: TestClient) -> None:
    assert client.get("/static/style.css").status_code == 200
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2f..%2fpyproject.toml"):
        assert client.get(path).status_code == 404, path
    page(client, "/nowhere", status=404)


def test_a_direction_page_offers_edits_only_for_a_model_edit_can_measure(
    client: TestClient, hostile_atlas: Path
) -> None:
    """MiniLM is a masked language model, so its page names why there is no edit command (it
    listed three that `edit` always refuses); a causal model's page lists them."""
    with atlas.open(hostile_atlas) as a:
        causal = a.sql("SELECT min(direction_id) FROM directions WHERE model_id = ?", [HOSTILE_ID])
        refusal = a.edit_refusal("minilm")
        assert a.edit_refusal(HOSTILE_ID) is None
    assert refusal is not None and "not a causal language model" in refusal
    masked = html.unescape(page(client, "/directions/432"))
    assert "edit minilm" not in masked and f"No edit command here: {refusal}" in masked
    first = causal.column(0)[0].as_py()
    listed = html.unescape(page(client, f"/directions/{first}"))
    for eps in ("-1", "-0.5", "1"):
        assert f"--direction {first} --eps {eps} --prompt PROMPT" in listed


def test_a_heads_qk_page_lists_its_query_and_key_directions(
    client: TestClient, hostile_atlas: Path
) -> None:
    with atlas.open(hostile_atlas) as a:
        card = a.card("minilm", 3, 5, top=20, circuit="qk")
    text = page(client, "/matrix?model=minilm&layer=3&head=5&circuit=qk")
    assert "Layer 3 head 5 QK circuit" in text and "query +" in text and "key −" in text
    for d in card["directions"]:
        assert f'href="/directions/{d["query_id"]}"' in text
        assert f'href="/directions/{d["key_id"]}"' in text
    assert "&amp;circuit=qk&amp;page=2" in text  # the pager stays on the QK circuit
    assert "--circuit qk" in text and 'href="/matrix?model=minilm&amp;layer=3&amp;head=5"' in text
    ov = page(client, "/matrix?model=minilm&layer=3&head=5")
    assert "head 5 OV circuit" in ov and "head=5&amp;circuit=qk" in ov
    page(client, "/matrix?model=minilm&layer=3&head=mlp_in&circuit=qk", status=400)
