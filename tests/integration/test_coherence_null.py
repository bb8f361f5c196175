"""Coherence leads with a percentile against a null: random token lists of the same length and
vocabulary land uniformly (about 50 on average), concept lists high, and every place that shows
coherence (library, CLI text and JSON, HTTP, pages, cards) shows the percentile first."""

from __future__ import annotations

import html
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.stats import kstest

import atlas
from atlas.core.jsondata import jsonable
from atlas.core.tokens import display_vocabulary
from atlas.models.bundled import minilm_words
from atlas.models.coherence import Scorer, clean, default_cache_dir
from atlas.server.app import create_app
from query.coherence import NULL_LISTS, list_coherence, random_lists
from tests.support.helpers import assert_one_error_line, run_cli

# slow: the null of random lists embeds the whole vocabulary once; MiniLM with coherence
pytestmark = pytest.mark.slow

FIRE = "fire, flame, smoke, burning, blaze, heat"
NUMBERS = "one, two, three, four, five, six"
THEME = "P(a lenient judge names a theme)"


@pytest.fixture(scope="module")
def vocabulary() -> list[str]:
    """MiniLM's vocabulary in the atlas's display form, without entries that read as nothing."""
    return [t for t in display_vocabulary(minilm_words()) if clean(t)]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer()


def _random(vocabulary: list[str], n: int, length: int, seed: int) -> list[list[str]]:
    """``n`` lists of ``length`` distinct tokens, drawn uniformly with the test's own seed."""
    rng = np.random.default_rng(seed)
    return [[vocabulary[i] for i in rng.choice(len(vocabulary), length, False)] for _ in range(n)]


@pytest.mark.parametrize("length", [6, 15])
def test_random_lists_land_uniformly_around_the_50th_percentile(
    vocabulary: list[str], length: int
) -> None:
    lists = _random(vocabulary, 200, length, seed=2024)  # not the null's seed
    pct = np.array([r.coherence_pct for r in atlas.coherence(*lists)])
    assert 40 <= pct.mean() <= 60, pct.mean()
    # roughly uniform on 0..100: Kolmogorov-Smirnov against U(0, 100) does not reject
    assert kstest(pct / 100, "uniform").pvalue > 0.01, np.percentile(pct, [10, 50, 90])


def test_concept_lists_land_high_and_keep_their_raw_score(scorer: Scorer) -> None:
    fire, numbers = atlas.coherence(FIRE, NUMBERS.split(", "))
    assert fire.coherence_pct >= 90 and numbers.coherence_pct >= 90
    assert fire.tokens == FIRE.split(", ") and numbers.tokens == NUMBERS.split(", ")
    raw = scorer.score_lists([FIRE.split(", "), NUMBERS.split(", ")])
    np.testing.assert_allclose([fire.coherence, numbers.coherence], raw, rtol=1e-12)
    assert fire.null == {"vocabulary": "minilm", "vocabulary_size": 30522, "length": 6,
                         "lists": NULL_LISTS, "seed": 0}  # fmt: skip


def test_percentile_agrees_with_a_fresh_random_sample(
    vocabulary: list[str], scorer: Scorer
) -> None:
    """The stored null is a sample of the distribution the test draws from on its own."""
    fresh = np.sort(scorer.score_lists(_random(vocabulary, 2000, 6, seed=99)))
    probes = [
        ["ories", "acked", "oses", "icles", "ure", "ove"],
        ["table", "democracy", "purple", "swim", "guitar", "seven"],
        *_random(vocabulary, 3, 6, seed=5),
    ]
    for r in atlas.coherence(*probes):
        expected = 100 * np.searchsorted(fresh, r.coherence, side="right") / len(fresh)
        assert abs(r.coherence_pct - expected) < 4, (r.tokens, r.coherence_pct, expected)


def test_null_is_seeded_and_cached_per_length(tmp_path: Path) -> None:
    a, b = random_lists(30522, 6), random_lists(30522, 6)
    assert np.array_equal(a, b) and a.shape == (NULL_LISTS, 6)
    assert all(len(set(row)) == 6 for row in a)  # distinct tokens within a list
    assert not np.array_equal(random_lists(30522, 7)[:, :6], a)
    first = list_coherence([FIRE, "ories, acked, oses"], cache_dir=tmp_path)
    files = list(tmp_path.glob("list-null-*.npz"))
    assert len(files) == 1
    with np.load(files[0]) as data:
        assert sorted(data.files) == ["k3", "k6"] and len(data["k6"]) == NULL_LISTS
        assert np.all(np.diff(data["k6"]) >= 0)
    uncached = list_coherence([FIRE, "ories, acked, oses"], cache_dir=None)
    assert [r.to_dict() for r in first] == [r.to_dict() for r in uncached]


def test_cli_text_leads_with_the_percentile(tmp_path: Path) -> None:
    fire, junk = atlas.coherence(FIRE, "ories, acked, oses")
    one = run_cli("coherence", FIRE)
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert lines[0].split() == ["percentile", "P(theme)", "tokens"]
    assert lines[1].split()[:2] == [f"{fire.coherence_pct:.1f}", f"{fire.coherence:.4f}"]
    assert "10,000 random lists" in one.stdout and THEME in one.stdout

    path = tmp_path / "lists.txt"
    path.write_text(f"{FIRE}\n\nories, acked, oses\n", encoding="utf-8")
    text = run_cli("coherence", "--file", path)
    rows = [line.split()[:2] for line in text.stdout.splitlines()[1:3]]
    assert rows == [[f"{r.coherence_pct:.1f}", f"{r.coherence:.4f}"] for r in (fire, junk)]

    js = run_cli("coherence", "--file", path, "--format", "json")
    objects = json.loads(js.stdout)  # one array, as every listing's json
    assert [list(o) for o in objects] == [["coherence_pct", "coherence", "tokens", "null"]] * 2
    for o, r in zip(objects, (fire, junk), strict=True):
        assert o["coherence_pct"] == r.coherence_pct and o["null"] == r.null
        assert o["coherence"] == pytest.approx(r.coherence, abs=1e-6)

    assert "2 to 100 tokens" in assert_one_error_line(run_cli("coherence", "fire"))


@pytest.fixture(scope="module")
def client(minilm_coherence_atlas: Path) -> Iterator[TestClient]:
    with TestClient(create_app(str(minilm_coherence_atlas))) as c:
        yield c


def _same(value: Any) -> Any:
    return json.loads(json.dumps(jsonable(value)))


def test_http_api_equals_the_library(client: TestClient) -> None:
    expected = _same(atlas.coherence(FIRE)[0].to_dict())  # its null computed, or read
    response = client.get("/api/coherence", params={"q": FIRE})
    assert response.status_code == 200, response.text
    assert response.json() == expected
    for bad in ({"q": "fire"}, {"q": ""}, {}):
        refused = client.get("/api/coherence", params=bad)
        assert refused.status_code == 400 and "error" in refused.json(), (bad, refused.text)


def test_a_null_not_computed_yet_is_503_at_once_then_computed_once(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A null not in the cache: the server starts it on a thread and answers 503 at once (the
    first computation outlasts a request's time limit), however often asked; then the answer
    is the library's. (A cache folder of its own, with the judge's embeddings copied in.)"""
    for judge in default_cache_dir().glob("judge-*.npz"):
        shutil.copy(judge, tmp_path)
    monkeypatch.setenv("SVD_ATLAS_CACHE", str(tmp_path))
    thirteen = ", ".join(["fire", "flame", "smoke", "ash", "ember", "blaze", "heat", "spark",
                          "burn", "coal", "torch", "soot", "lava"])  # fmt: skip
    for _ in range(3):
        busy = client.get("/api/coherence", params={"q": thirteen})
        assert busy.status_code == 503, busy.text
        assert "lists of 13 tokens is being computed" in busy.json()["error"]
    assert sum(t.name == "svd-atlas-coherence-null" for t in threading.enumerate()) <= 1
    deadline = time.monotonic() + 300
    while (done := client.get("/api/coherence", params={"q": thirteen})).status_code == 503:
        assert time.monotonic() < deadline, "the null was never computed"
        time.sleep(0.5)
    assert done.status_code == 200, done.text
    assert done.json() == _same(atlas.coherence(thirteen)[0].to_dict())


def _text(client: TestClient, url: str, **params: Any) -> str:
    response = client.get(url, params=params or None)
    assert response.status_code == 200, response.text
    return html.unescape(re.sub(r"<[^>]+>", "", response.text))


def test_coherence_page_shows_the_percentile_first(client: TestClient) -> None:
    (fire,) = atlas.coherence(FIRE)
    text = _text(client, "/coherence", q=FIRE)
    pct, raw = f"{fire.coherence_pct:.1f}", f"{fire.coherence:.4f}"
    assert f"percentile{pct}" in text.replace(" ", "").replace("\n", "") and raw in text
    assert text.index("percentile") < text.index(THEME)
    assert "Coherence" in _text(client, "/coherence")  # the empty form
    assert client.get("/coherence", params={"q": "fire"}).status_code == 400


def test_direction_and_matrix_pages_lead_with_the_stored_percentile(
    client: TestClient, minilm_coherence_atlas: Path
) -> None:
    with atlas.open(minilm_coherence_atlas) as a:
        (row,) = a.sql(
            "SELECT direction_id FROM directions WHERE coherence_pct BETWEEN 50 AND 99.9 "
            "ORDER BY direction_id LIMIT 1"
        ).to_pylist()
        card = a.card(row["direction_id"])
        matrix = a.card("minilm", 3, "3")
        grid = [g for g in a.matrix_stats("minilm", "coherence_pct") if g["kind"] != "qk"]
    for url, c in ((f"/directions/{card['direction_id']}", card),
                   ("/matrix?model=minilm&layer=3&head=3", matrix)):  # fmt: skip
        text = _text(client, url)
        shown = f"percentile {c['coherence_pct']:.1f} of the model's null"
        assert shown in text, url
        assert text.index(shown) < text.index(f"{THEME} {c['coherence']:.3f}"), url
    model = client.get("/model", params={"model": "minilm", "stat": "coherence_pct"}).text
    cells = re.findall(r'head=(\w+)" aria-label="layer (\d+) [^:]*: [^"]* ([\d.]+)"', model)
    assert len(cells) == len(grid) == 6 * (12 + 2)  # the grid: each layer's OV heads and MLP
    values = {(int(layer), head): float(v) for head, layer, v in cells}
    for g in grid:
        key = (g["layer"], str(g["head"]) if g["head"] is not None else g["kind"])
        assert values[key] == pytest.approx(g["value"], rel=1e-3)


def test_cli_direction_card_shows_the_percentile(minilm_coherence_atlas: Path) -> None:
    with atlas.open(minilm_coherence_atlas) as a:
        card = a.card(433)
    shown = run_cli("--atlas", minilm_coherence_atlas, "show", "433")
    assert shown.returncode == 0, shown.stderr
    assert f"coherence: percentile {card['coherence_pct']:.1f} of the model's null" in shown.stdout
    assert f"{THEME} {card['coherence']:.4f}" in shown.stdout
