"""A real HTTP server on a free loopback port, in a thread of the test process, and the
system Chromium for Playwright (browser downloads are not possible here)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from atlas.server.app import create_app

CHROMIUM_ARGS = [  # as root, on a machine whose network is closed
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    """Debian's Chromium (apt-get install chromium), which Playwright drives."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def serving(location: str, timeout: float = 10.0) -> Iterator[str]:
    """The server of ``location`` at the URL yielded, until the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(location, timeout), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
