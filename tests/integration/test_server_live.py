"""`svd-atlas serve` as the README starts it: loopback by default, models published meanwhile
show up without a restart and never mixed with the old ones, and a kill -9 loses nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.helpers import (
    assert_one_error_line,
    fingerprint,
    run_cli,
    run_cli_process,
    start_cli,
)
from tests.support.tiny_models import ingest_loaded, tiny_gpt2

# slow: runs `svd-atlas serve` as a real process, ingests beside it and kills it
pytestmark = pytest.mark.slow

START_SECONDS = 90  # a cold start imports FastAPI, DuckDB and FAISS and opens the atlas


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `svd-atlas serve` subprocess on a free loopback port, stopped by the fixture: one
    worker process unless ``args`` say otherwise."""

    def __init__(self, root: Path, *args: str, workers: int | None = 1):
        args = (*args, "--workers", str(workers)) if workers else args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = start_cli("--atlas", root, "serve", "--port", str(self.port), *args)
        self.banner = self._wait()

    def _wait(self) -> str:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.process.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return ""
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError("the server did not start in time")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def stop(self, sig: int = signal.SIGINT) -> str:
        self.process.send_signal(sig)
        _, err = self.process.communicate(timeout=30)
        return err


@pytest.fixture
def served(atlas_copy: Path) -> Iterator[tuple[Server, Path]]:
    server = Server(atlas_copy)
    yield server, atlas_copy
    if server.process.poll() is None:
        server.stop()


def test_starts_on_loopback_and_says_so(served: tuple[Server, Path]) -> None:
    server, root = served
    assert server.get("/api/models").json()[0]["model_id"] == "minilm"
    assert server.get("/").status_code == 200
    err = server.stop()
    assert f"http://127.0.0.1:{server.port}" in err and "loopback only" in err
    assert "resident memory" in err and "1 models, 13,824 directions" in err
    assert "Traceback" not in err


def test_publishes_show_up_without_a_restart_and_never_mixed(
    served: tuple[Server, Path],
) -> None:
    """A --replace ingest gives minilm fresh ids; every response in between is all old or all
    new, and the new model is served once published."""
    server, root = served
    old = {h["direction_id"] for h in server.get("/api/search?text=fire&k=20").json()["hits"]}
    assert max(old) < 13824
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = server.get("/api/search?text=fire&k=20")
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:200]}")
                continue
            ids = [h["direction_id"] for h in r.json()["hits"]]
            generations = {"old" if i < 13824 else "new" for i in ids}
            if len(generations) != 1:
                failures.append(f"mixed: {ids}")
            seen.append(generations.pop())
            stop.wait(0.05)  # leave the ingest in this process its share of the GIL

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        ingest = run_cli("--atlas", root, "ingest", "minilm", "--replace", "--max-rank", "4")
        assert ingest.returncode == 0, ingest.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not seen or seen[-1] != "new"):
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]
    assert seen[0] == "old" and seen[-1] == "new", seen[-3:]
    assert server.get("/api/health").json()["reloads"] >= 1
    # a model added by a load shows up the same way
    other, bundle = root.parent / "other", root.parent / "tiny.bundle"
    ingest_loaded(other, tiny_gpt2(), "tiny")
    assert run_cli("--atlas", other, "export", "tiny", "-o", bundle).returncode == 0
    assert run_cli("--atlas", root, "load", bundle).returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "tiny" in server.get("/api/health").json()["models"]:
            break
        time.sleep(0.2)
    assert server.get("/api/health").json()["models"] == ["minilm", "tiny"]


def test_kill_9_loses_nothing(served: tuple[Server, Path]) -> None:
    server, root = served
    before = fingerprint(root)
    files = sorted(p.relative_to(root) for p in root.rglob("*"))
    for path in ("/", "/search?text=fire", "/directions/432", "/api/sql?query=SELECT+1",
                 "/model?model=minilm", "/sql?query=SELECT+count(*)+FROM+top_tokens"):  # fmt: skip
        assert server.get(path).status_code == 200
    server.process.kill()
    server.process.wait(30)
    assert fingerprint(root) == before
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == files
    restarted = Server(root)
    try:
        assert restarted.get("/api/search?text=fire&k=3").status_code == 200
    finally:
        restarted.stop()


def test_workers(atlas_copy: Path) -> None:
    """By default a worker process per core (at most 8), each answering."""
    server = Server(atlas_copy, workers=None)
    try:
        answers = {server.get("/api/health").json()["status"] for _ in range(6)}
        assert answers == {"ok"}
        workers = [p for p in _children(server.process.pid) if "spawn_main" in _cmdline(p)]
    finally:
        err = server.stop(signal.SIGTERM)
    expected = min(len(os.sched_getaffinity(0)), 8)
    assert "1 models, 13,824 directions, opened with 1 of their indexes loaded" in err
    if expected > 1:
        assert f"; {expected} worker processes" in err and len(workers) == expected
    else:
        assert "resident memory" in err


def test_what_would_stop_a_worker_stops_serve_in_one_line(atlas_copy: Path) -> None:
    """Damage found only when the indexes are loaded (a truncated unembedding) stops `serve` in
    one line however many workers it would start (uvicorn restarted failing workers forever,
    a traceback each time)."""
    (unembed,) = atlas_copy.glob("store/*/unembed.npy")
    with unembed.open("r+b") as f:
        f.truncate(1000)
    for workers in ("1", "2"):
        args = ("--atlas", atlas_copy, "serve", "--port", str(free_port()), "--workers", workers)
        line = assert_one_error_line(run_cli_process(*args, timeout=120))
        assert "unembed.npy is damaged" in line, line


def test_a_worker_that_cannot_start_fails_serve_in_one_line(atlas_copy: Path) -> None:
    """The atlas breaks between the server's opening and its workers' (a catalog written over
    after the banner, before a worker's interpreter has started): one line and exit 1, not
    a line per worker, uvicorn's own log line and exit 0."""
    process = start_cli("--atlas", atlas_copy, "serve", "--port", str(free_port()),
                        "--workers", "2")  # fmt: skip
    assert process.stderr is not None
    banner = process.stderr.readline()
    assert "2 worker processes" in banner, banner
    (atlas_copy / "catalog.json").write_text("{garbage")
    _, err = process.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip() and "http://" not in line]
    assert process.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("Error: ") and "catalog.json" in lines[0], err


def test_workers_leave_what_the_server_found_at_start_up_to_it(small_copy: Path) -> None:
    """A model whose index is damaged is told once, as a note, by the server, not once per
    worker as a Python warning; a request's notes stay in its response."""
    catalog = json.loads((small_copy / "catalog.json").read_text())
    model = sorted(catalog["models"])[0]
    (shard,) = (small_copy / catalog["models"][model]["store"]).glob("residual-*.faiss")
    with shard.open("r+b") as f:
        f.truncate(1000)
    server = Server(small_copy, workers=2)
    try:
        for _ in range(4):  # refused: the model's own index is damaged
            refused = server.get(f"/api/search?text=fire&k=3&model={model}")
            assert refused.status_code == 503 and "residual-" in refused.json()["error"]
            noted = server.get("/api/search?text=fire+qqzzqq&k=3")  # a word no model has
            assert noted.status_code == 200 and "qqzzqq" in " ".join(noted.json()["notes"])
    finally:
        err = server.stop()
    damage = [line for line in err.splitlines() if f"model {model!r}" in line]
    assert len(damage) == 1 and damage[0].startswith("note: "), err
    assert "AtlasWarning" not in err and "Traceback" not in err and "qqzzqq" not in err, err


def test_the_workers_end_with_a_killed_server(atlas_copy: Path) -> None:
    """kill -9 of the server (or the kernel's out-of-memory killer) ends its workers too:
    they would go on serving alone, holding the port."""
    server = Server(atlas_copy, workers=2)
    workers = [p for p in _children(server.process.pid) if "spawn_main" in _cmdline(p)]
    assert len(workers) == 2 and server.get("/api/health").status_code == 200
    server.process.kill()
    server.process.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(map(_running, workers)):
        time.sleep(0.2)
    assert not any(map(_running, workers))
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", server.port))  # the port is free


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whoever adopted it, if anyone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def test_bad_starts_are_one_line(minilm_atlas: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_one_error_line(run_cli("--atlas", minilm_atlas, "serve", "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line
    assert "no atlas at" in assert_one_error_line(
        run_cli("--atlas", tmp_path / "none", "serve", "--port", str(free_port()))
    )
    assert run_cli("--atlas", minilm_atlas, "serve", "--port", "0").returncode == 2  # click


def test_the_readmes_server_calls(minilm_atlas: Path) -> None:
    """The README's `svd-atlas serve` banner, curl calls and httpx lines, replayed against a
    server of the MiniLM atlas (the README's ./data/atlas)."""
    import contextlib
    import io
    import re

    from atlas.cli.serve import default_workers
    from tests.integration.test_readme import README_TEXT, fenced_blocks

    server = Server(minilm_atlas, workers=None)  # as the README starts it
    try:
        blocks = fenced_blocks(README_TEXT)
        banner = next(b for b in blocks if b.startswith("$ svd-atlas serve\n"))
        calls = next(b for b in blocks if b.startswith("$ curl "))
        for command, *output in (c.splitlines() for c in re.split(r"^(?=\$ )", calls, flags=re.M)
                                 if c.strip()):  # fmt: skip
            url = re.fullmatch(r"\$ curl -s '(http://127\.0\.0\.1:8321[^']+)'", command)
            assert url, command
            got = httpx.get(url[1].replace(":8321", f":{server.port}"), timeout=30).text
            # the README's server reads the default atlas, which it names as data/atlas
            expected = re.sub(r"(\./)?data/atlas", str(minilm_atlas), "\n".join(output))
            assert got.strip() == expected.strip(), command
        python = next(b for b in fenced_blocks(README_TEXT, "python") if "httpx" in b)
        shown = next(b for b in blocks if b.startswith("[("))  # what the httpx lines print
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(python.replace(":8321", f":{server.port}"), {})
        assert printed.getvalue().strip() == shown.strip()
    finally:
        err = server.stop()
    number = re.compile(r"[\d.,]+")
    words = [number.sub("#", w) for w in banner.splitlines()[1:]]
    lines = [line.replace(str(minilm_atlas), "./data/atlas").replace(f":{server.port}", ":8321")
             for line in err.splitlines()[:2]]  # fmt: skip
    printed_words = [number.sub("#", line) for line in lines]
    if default_workers() == 1:  # the README shows a machine of several cores
        words[0] = words[0].replace("; # worker processes", "; resident memory # MB")
    assert printed_words == words


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_client_that_connects_on_seeing_the_address_is_answered(
    atlas_copy: Path, workers: str
) -> None:
    """The socket listens before the address is printed: a client that connects at once
    waits for the first worker instead of being refused (uvicorn listened only once it, or
    its first worker, had started: a script that waited for the line got ECONNREFUSED)."""
    port = free_port()
    process = start_cli("--atlas", atlas_copy, "serve", "--port", str(port), "--workers", workers)
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + START_SECONDS
        while "Ctrl-C stops it" not in process.stderr.readline():
            assert process.poll() is None and time.monotonic() < deadline
        answer = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=START_SECONDS)
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err, err
