"""A researcher's walk through the pages in headless Chromium (Debian's, driven by Playwright):
search, open a hit, follow a trace; a model grid cell; a SQL query and its CSV; hostile text;
the keyboard; with JavaScript off (the pages need none) and on, at desktop and phone width."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import atlas
from tests.support.live_server import CHROMIUM_ARGS, chromium_path, serving

pytestmark = [
    pytest.mark.slow,  # headless Chromium against a server
    pytest.mark.skipif(
        chromium_path() is None,
        reason="needs Chromium: apt-get install chromium (CI's .ci/run installs it)",
    ),
]
DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def url(minilm_atlas: Path) -> Iterator[str]:
    with serving(str(minilm_atlas)) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(params=[False, True], ids=["javascript off", "javascript on"])
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP, java_script_enabled=request.param)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    dialogs: list[str] = []
    tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    yield tab
    context.close()
    assert not dialogs, f"a page ran a script: {dialogs}"


def test_search_open_a_hit_follow_a_trace(page: Any, url: str, minilm_atlas: Path) -> None:
    page.goto(url)
    page.get_by_label("Find directions for a concept").fill("fire")
    page.keyboard.press("Enter")
    page.wait_for_url("**/search?text=fire*")
    with atlas.open(minilm_atlas) as a:
        first = a.search("fire")[0]
    hit = page.locator("table.hits tbody tr").first.get_by_role("link")
    assert hit.inner_text() == str(first.direction_id)
    hit.click()
    page.wait_for_url(f"**/directions/{first.direction_id}")
    assert page.get_by_role("heading", level=1).inner_text() == f"Direction {first.direction_id}"
    page.get_by_label("min |cos|").fill("0.2")
    page.get_by_role("button", name="Trace").click()
    page.wait_for_url("**min_cos=0.2*")
    traced = page.locator("table.trace tbody tr td:first-child a")
    assert traced.count() >= 2
    target = traced.nth(traced.count() - 1).inner_text()
    traced.nth(traced.count() - 1).click()
    page.wait_for_url(f"**/directions/{target}")
    assert page.get_by_role("heading", level=1).inner_text() == f"Direction {target}"


def test_model_grid_cell_opens_the_head(page: Any, url: str) -> None:
    page.goto(url)
    page.get_by_role("link", name="minilm", exact=True).click()
    page.wait_for_url("**/model?model=minilm")
    page.get_by_label("layer 3 head 3: sigma_max").click()
    page.wait_for_url("**/matrix?model=minilm&layer=3&head=3")
    assert page.get_by_role("heading", level=1).inner_text() == "Layer 3 head 3 OV circuit"
    assert page.locator("table.card tbody tr").count() == 20
    page.get_by_role("link", name="next →").click()
    assert page.locator("table.card tbody tr").count() == 12  # rank 32: 20 + 12
    page.go_back()
    page.go_back()
    page.get_by_label("Colour by").select_option("stable_rank")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**stat=stable_rank")
    assert page.get_by_label("layer 0 head 0: stable rank").count() == 1


def test_a_head_opens_its_composition_and_the_directions_that_carry_it(page: Any, url: str) -> None:
    page.goto(url + "/model?model=minilm")
    page.get_by_role("link", name="V", exact=True).click()
    page.wait_for_url("**/circuits?model=minilm&mode=V")
    page.get_by_label("Relative score at least").fill("2")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**min_relative=2**")
    assert page.locator("table.card tbody tr").count() >= 1
    page.get_by_label("layer 3 head 3: strongest V input", exact=False).click()
    page.wait_for_url("**/circuits/head?model=minilm&layer=3&head=3")
    assert page.get_by_role("heading", level=1).inner_text() == "Layer 3 head 3: composition"
    page.locator("table.card a[href^='/directions/']").first.click()
    page.wait_for_url("**/directions/*")
    assert "direction" in page.get_by_role("heading", level=1).inner_text().lower()


def test_sql_query_and_csv_download(page: Any, url: str, minilm_atlas: Path) -> None:
    query = "SELECT layer, head, round(sigma_max, 3) AS s FROM head_summary ORDER BY s DESC"
    page.goto(f"{url}/sql")
    page.get_by_label("One read-only statement").fill(query)
    page.get_by_label("Show at most").fill("5")
    page.get_by_role("button", name="Run").click()
    page.wait_for_url("**/sql?query=*")
    rows = page.locator("table.sql-result tbody tr")
    assert rows.count() == 5
    with atlas.open(minilm_atlas) as a:
        expected = a.sql(query).to_pylist()
    first = rows.first.locator("td").all_inner_texts()
    assert first == [str(expected[0]["layer"]), str(expected[0]["head"]), str(expected[0]["s"])]
    assert "row limit 5" in page.locator("main").inner_text()
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    content = Path(download.value.path()).read_text()
    parsed = list(csv.DictReader(io.StringIO(content)))
    assert len(parsed) == len(expected) == 72
    assert [float(r["s"]) for r in parsed] == [r["s"] for r in expected]


def test_script_search_shows_as_text(page: Any, url: str) -> None:
    hostile = "<script>alert('x')</script><img/src=x/onerror=alert(2)>"
    page.goto(url)
    page.get_by_label("Search for a concept").fill(hostile)
    page.get_by_role("button", name="Search").first.click()
    page.wait_for_url("**/search?text=*")
    assert hostile in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Words").input_value() == hostile
    assert page.locator("img[src=x]").count() == 0


def test_keyboard_only(browser: Any, url: str) -> None:
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    try:
        tab.goto(url)
        tab.keyboard.press("Tab")
        assert tab.evaluate("document.activeElement.textContent") == "Skip to content"
        tab.keyboard.press("Enter")
        assert tab.evaluate("document.activeElement.id") == "main"
        for _ in range(8):  # tab onward to the big search box, type, submit
            tab.keyboard.press("Tab")
            if tab.evaluate("document.activeElement.id") == "home-q":
                break
        assert tab.evaluate("document.activeElement.id") == "home-q"
        tab.keyboard.type("water")
        tab.keyboard.press("Enter")
        tab.wait_for_url("**/search?text=water*")
        tab.keyboard.press("Tab")
        assert tab.evaluate("document.activeElement.textContent") == "Skip to content"
    finally:
        context.close()


@pytest.mark.parametrize("path", ["/", "/search?text=fire", "/model?model=minilm",
                                  "/matrix?model=minilm&layer=2&head=mlp_in", "/directions/432",
                                  "/sql?query=SELECT+*+FROM+models", "/circuits?model=minilm",
                                  "/circuits/head?model=minilm&layer=3&head=3"])  # fmt: skip
def test_phone_width_has_no_sideways_page_scroll(browser: Any, url: str, path: str) -> None:
    """Wide tables scroll inside their own box; the page itself fits a phone's width."""
    context = browser.new_context(viewport=PHONE)
    tab = context.new_page()
    try:
        tab.goto(url + path)
        width = tab.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], (path, width)
    finally:
        context.close()
