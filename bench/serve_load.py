"""Load benchmark of `svd-atlas serve` on a 1e6-direction atlas, beside its baselines.

    python bench/serve_load.py [--seconds 20] [--clients 1,8] [--workers 1,2]

The atlas is a real ingest of a random GPT-2-style model of width 384 with 434 layers
(999,936 directions, approximate index), saved as a folder and streamed; it is built once
into data/bench/ (about 15 minutes on 2 cores) and reused. In one run, this measures:

- the library's own search (``atlas.open(...).search``, in process, index loaded), p50 and
  p99 over the same queries the clients send: the baseline of the HTTP figures;
- the CLI's cold-process time for one search (``svd-atlas search``, best of 3), what a
  researcher pays per question without the server;
- the server's start-up time (until /api/health answers) and resident memory;
- for each client count: HTTP search p50/p99, throughput and errors (searches only), then a
  mix of searches, cards, traces and SQL.

Clients are threads of this process (``http.client``, one keep-alive connection each), bounded in
number and time; they share the machine's cores with the server, and the report says so.
Results go to bench/results/serve.json and the "Server" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import million  # noqa: E402

DATA = ROOT / "data" / "bench"
RESULTS = ROOT / "bench" / "results" / "serve.json"
CLI = [sys.executable, "-c", "from atlas.cli import main; main()"]
WORDS = [
    "fire",
    "water",
    "king",
    "music",
    "money",
    "city",
    "doctor",
    "green",
    "war",
    "food",
    "river",
    "computer",
    "winter",
    "law",
]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def million_direction_atlas() -> Path:
    """The 1e6-direction atlas (``bench/million.py``, built on first use)."""
    return million.million_atlas()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 2)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "n": len(ordered)}


def queries(directions: int, n: int = 400, seed: int = 0) -> list[dict[str, Any]]:
    """Searches as researchers send them: words, and "more like this" direction ids."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i % 2:
            out.append({"direction": rng.randrange(directions), "k": 10})
        else:
            out.append({"text": rng.choice(WORDS), "k": 10})
    return out


def library_search(
    atlas_dir: Path, sample: list[dict[str, Any]], threads: list[int], seconds: float
) -> dict[str, Any]:
    """The baseline: the same searches through the library, in this process, index loaded:
    one at a time (latency), and from as many threads as there will be clients (throughput)."""
    import warnings

    import atlas
    from atlas.core.errors import AtlasWarning

    warnings.simplefilter("ignore", AtlasWarning)
    with atlas.open(atlas_dir) as a:
        a.load_indexes(8 << 30)
        for q in sample[:20]:  # warm-up
            a.search(q.get("text"), direction=q.get("direction"), k=q["k"])
        times = []
        for q in sample:
            start = time.perf_counter()
            a.search(q.get("text"), direction=q.get("direction"), k=q["k"])
            times.append(time.perf_counter() - start)
        parallel = {n: parallel_searches(a, sample, n, seconds) for n in threads}
    return percentiles(times) | {
        "mean_ms": round(statistics.mean(times) * 1e3, 2),
        "parallel_per_s": parallel,
    }


def parallel_searches(a: Any, sample: list[dict[str, Any]], threads: int, seconds: float) -> float:
    """What the cores allow: searches a second from ``threads`` threads of this process on one
    handle, each searching on one thread as the server's workers do under load (a request
    alone searches on every core), for ``seconds``."""
    from atlas.interface import search_threads

    done = [0] * threads
    deadline = time.monotonic() + seconds

    def searcher(n: int) -> None:
        search_threads(1)
        i = n * 7
        while time.monotonic() < deadline:
            q = sample[i % len(sample)]
            a.search(q.get("text"), direction=q.get("direction"), k=q["k"])
            done[n] += 1
            i += threads

    started = time.perf_counter()
    workers = [threading.Thread(target=searcher, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60)
    return round(sum(done) / (time.perf_counter() - started), 1)


def cli_cold(atlas_dir: Path) -> dict[str, Any]:
    """One search as a fresh `svd-atlas search` process (best of 3, after one warm-up)."""
    command = [*CLI, "--atlas", str(atlas_dir), "search", "fire", "-k", "10"]
    subprocess.run(command, check=True, capture_output=True, env=env())
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env())
        times.append(time.perf_counter() - start)
    return {"best_seconds": round(min(times), 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resident_mb(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
    return round(total / 1024, 1)


def server_pids(process: subprocess.Popen[str]) -> list[int]:
    """The server and its worker processes."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return [process.pid, *map(int, children)]


def start_server(atlas_dir: Path, workers: int) -> tuple[subprocess.Popen[str], str, float]:
    import httpx

    port = free_port()
    started = time.perf_counter()
    log = DATA / f"serve-{workers}.log"  # a file, not a pipe: nobody reads it while it runs
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [*CLI, "--atlas", str(atlas_dir), "serve", "--port", str(port), "--workers",
             str(workers), "--timeout", "30"],
            stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env(),
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(log.read_text() or "server exited")
        try:
            if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    startup = time.perf_counter() - started
    if workers > 1:  # every worker opens the atlas: wait until each has answered
        for _ in range(20 * workers):
            httpx.get(f"{url}/api/health", timeout=30)
    return process, url, round(startup, 2)


def load(url: str, clients: int, seconds: float, paths: list[str]) -> dict[str, Any]:
    """``clients`` threads sending ``paths`` in turn for ``seconds``; latencies and errors.

    Each client is the standard library's ``http.client`` on one keep-alive connection: it
    shares the cores with the server, and costs a third of the CPU per request that httpx does
    (0.42 against 1.2 ms measured side by side on a loaded machine), so the figures are more
    the server's and less the load generator's.
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        http_connection = http.client.HTTPConnection(host or "127.0.0.1", port, timeout=30)
        i = offset
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                http_connection.request("GET", paths[i % len(paths)])
                response = http_connection.getresponse()
                response.read()
                outcome = "" if response.status == 200 else str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                http_connection.close()  # reconnects on the next request
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if outcome:
                    errors.append(outcome)
            i += clients
        http_connection.close()

    threads = [threading.Thread(target=client, args=(c * 7,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    wall = time.perf_counter() - started
    return percentiles(latencies) | {
        "clients": clients,
        "throughput_per_s": round(len(latencies) / wall, 1),
        "errors": len(errors),
        "error_examples": errors[:3],
    }


def search_paths(sample: list[dict[str, Any]]) -> list[str]:
    from urllib.parse import urlencode

    return [f"/api/search?{urlencode(q)}" for q in sample]


def mixed_paths(sample: list[dict[str, Any]], directions: int) -> list[str]:
    """60% searches, 25% cards, 10% traces, 5% SQL."""
    rng = random.Random(1)
    searches = search_paths(sample)
    out = []
    for i in range(400):
        r = rng.random()
        d = rng.randrange(directions)
        if r < 0.6:
            out.append(searches[i % len(searches)])
        elif r < 0.75:
            out.append(f"/api/directions/{d}")
        elif r < 0.85:
            layer = rng.randrange(million.TIERS["1e6"])
            head = rng.randrange(million.SHAPE["n_head"])
            out.append(f"/api/matrix?model=synthetic-1e6&layer={layer}&head={head}")
        elif r < 0.95:
            out.append(f"/api/directions/{d}/trace?min_cos=0.3&limit=50")
        else:
            out.append(f"/api/sql?query=SELECT+layer,+max(sigma)+AS+s+FROM+directions+WHERE+layer+%3C+"
                       f"{rng.randrange(1, 20)}+GROUP+BY+layer")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    atlas_dir = million_direction_atlas()
    import atlas

    with atlas.open(atlas_dir) as a:
        directions = int(a.models()[0]["directions"])
    sample = queries(directions)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "argv": sys.argv[1:],
        "cores": os.cpu_count(),
        "directions": directions,
        "library_search": library_search(
            atlas_dir, sample, [int(c) for c in args.clients.split(",")], args.seconds
        ),
        "cli_cold_search": cli_cold(atlas_dir),
        "servers": [],
    }
    print(json.dumps(result, indent=1), file=sys.stderr)
    for workers in map(int, args.workers.split(",")):
        process, url, startup = start_server(atlas_dir, workers)
        pids = server_pids(process)
        row: dict[str, Any] = {"workers": workers, "startup_seconds": startup,
                               "resident_mb_at_start": resident_mb(pids), "runs": []}  # fmt: skip
        try:
            for clients in map(int, args.clients.split(",")):
                for mix, paths in (("search", search_paths(sample)),
                                   ("mixed", mixed_paths(sample, directions))):  # fmt: skip
                    run = load(url, clients, args.seconds, paths) | {"mix": mix}
                    row["runs"].append(run)
                    print(json.dumps(run), file=sys.stderr)
            row["resident_mb_after"] = resident_mb(pids)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
        result["servers"].append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
