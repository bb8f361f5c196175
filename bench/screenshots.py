"""Screenshots of the main pages for the README: docs/screenshots/*.png.

    python bench/screenshots.py [ATLAS]

Serves ATLAS (default ./data/atlas, the README's MiniLM atlas; run from the repository root)
with `svd-atlas serve` and
photographs each page in Debian's headless Chromium through Playwright, with JavaScript off
(the pages need none), at 1366x768 (the search page also at phone width).
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "screenshots"
PAGES = {
    "home": "/",
    "search": "/search?text=fire&k=6",
    "model": "/model?model=minilm",
    "head": "/matrix?model=minilm&layer=3&head=3",
    "circuits": "/circuits?model=minilm&mode=K&top=12",
    "circuits-head": "/circuits/head?model=minilm&layer=3&head=3",
    "direction": "/directions/432?min_cos=0.2",
    "sql": "/sql?query=SELECT+layer,+head,+round(sigma_max,+2)+AS+sigma_max,+top_write_tokens[1:5]"
    "+AS+top_write+FROM+head_summary+ORDER+BY+sigma_max+DESC+LIMIT+8",
}


def main() -> None:
    from playwright.sync_api import sync_playwright

    from bench.serve_load import start_server

    atlas_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "data/atlas")  # as the README runs it
    OUT.mkdir(parents=True, exist_ok=True)
    process, url, _ = start_server(atlas_dir, workers=1)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=args)
            for width, height, suffix in ((1366, 768, ""), (390, 844, "-phone")):
                context = browser.new_context(
                    viewport={"width": width, "height": height}, java_script_enabled=False
                )
                page = context.new_page()
                for name, path in PAGES.items():
                    if suffix and name != "search":
                        continue
                    page.goto(url + path)
                    page.screenshot(path=OUT / f"{name}{suffix}.png", full_page=not suffix)
                    print(OUT / f"{name}{suffix}.png")
                context.close()
            browser.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)


if __name__ == "__main__":
    main()
