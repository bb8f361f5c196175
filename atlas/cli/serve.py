"""`svd-atlas serve`: the atlas in a browser and over HTTP (``atlas.server``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import click

from atlas.cli.numbers import FiniteFloat
from atlas.cli.query import memory_limit_option
from atlas.errors import AtlasError, one_line
from atlas.interface import parse_memory_limit
from atlas.server import DEFAULT_INDEX_MEMORY_GB, DEFAULT_PORT, DEFAULT_TIMEOUT

LOOPBACK = ("127.0.0.1", "localhost", "::1")
BACKLOG = 2048  # uvicorn's: connections the kernel queues before one is accepted
WORKER_SETTINGS_ENV = "SVD_ATLAS_SERVE"  # how `serve` hands its settings to its workers


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; the default is reachable from this machine only.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    show_default="a process per core, at most 8",
    help="Worker processes, each with the atlas open and its index codes in its own memory "
    "(the vectors' pages are shared): one process answers concurrent searches at two thirds "
    "of what two cores allow.",
)
@click.option(
    "--timeout",
    type=FiniteFloat(0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds a request may take before it is stopped (HTTP 504).",
)
@click.option(
    "--index-memory",
    type=FiniteFloat(0),
    default=DEFAULT_INDEX_MEMORY_GB,
    show_default=True,
    metavar="GB",
    help="Indexes kept loaded (memory-mapped); a search across more models than fit reads "
    "the others as it goes.",
)
@memory_limit_option
@click.pass_obj
def serve(
    obj: dict[str, Any],
    host: str,
    port: int,
    workers: int | None,
    timeout: float,
    index_memory: float,
    memory_limit: str,
) -> None:
    """Serve the atlas read-only: web pages at / and a JSON API under /api (/openapi.json).

    The atlas stays open with its indexes loaded; a model that an ingest or a load publishes
    meanwhile shows up without a restart. Nothing is ever written.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from atlas.server.app import create_app

    parse_memory_limit(memory_limit)  # one line now, not a failure in each worker
    listening = _listen(host, port)
    click.get_current_context().call_on_close(listening.close)  # however serve ends
    location = obj["atlas"]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    reach = (
        "loopback only: other machines cannot reach it"
        if host in LOOPBACK
        else "reachable from the network: anyone who can reach this address can read the atlas"
    )
    # httptools: uvicorn's C parser (a dependency), not its pure-Python fallback
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "http": "httptools",
    }
    workers = workers or default_workers()
    started = time.perf_counter()
    # opened here as each worker opens it: what would stop a worker is one line now, and what
    # a worker would warn (a model left out) is told once, here
    told: list[str] = []
    show = warnings.showwarning

    def tell(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        told.append(str(message))
        show(message, *args, **kwargs)

    warnings.showwarning = tell
    try:
        app = create_app(location, timeout, index_memory, memory_limit)
    finally:
        warnings.showwarning = show
    with app.state.live.lease() as a:
        n_models, n_directions = len(a.model_ids()), sum(m["directions"] for m in a.models())
        n_loaded = len(a.loaded_indexes())
    opened = (
        f"{n_models} models, {n_directions:,} directions, opened with {n_loaded} of their "
        f"indexes loaded in {time.perf_counter() - started:.1f} s"
    )
    if workers == 1:
        click.echo(
            f"serving {location}: {opened}; resident memory {_resident_mb():,.0f} MB", err=True
        )
        click.echo(f"  {url}  ({reach}); Ctrl-C stops it", err=True)
        server = uvicorn.Server(uvicorn.Config(app, **options))
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops on it, then raises it
            server.run(sockets=[listening])
        if not server.started:
            raise AtlasError(f"the server did not start on {url}")
        return
    app.state.live.close()  # each worker opens its own
    del app
    click.echo(f"serving {location}: {opened}; {workers} worker processes", err=True)
    click.echo(f"  {url}  ({reach}); Ctrl-C stops it", err=True)
    settings = {"location": location, "timeout": timeout, "index_memory_gb": index_memory,
                "memory_limit": memory_limit, "told": told}  # fmt: skip
    config = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=workers, **options)
    _run_workers(Multiprocess(config, sockets=[listening]), settings)


def _run_workers(supervisor: Any, settings: dict[str, Any]) -> None:
    """uvicorn's supervisor and its workers (:func:`worker_app`).

    A worker that cannot start leaves its one line in a file, and the parent fails with it
    once uvicorn has stopped (which it does, with a log line of its own left out here, and
    returns as if asked to)."""
    folder = Path(tempfile.mkdtemp(prefix="svd-atlas-serve-"))
    failure = folder / "failure"
    settings = {**settings, "parent": os.getpid(), "failure": str(failure)}
    os.environ[WORKER_SETTINGS_ENV] = json.dumps(settings)
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: "failed to start" not in record.getMessage()
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):  # the supervisor stops its workers first
            supervisor.run()
    finally:
        said = failure.read_text() if failure.exists() else None
        shutil.rmtree(folder, ignore_errors=True)
    if said:
        raise AtlasError(said)


def worker_app() -> Any:
    """The app of each worker process when `serve` runs several (uvicorn imports it by name).

    The parent opened the atlas first: a worker tells only what the parent did not (a model
    damaged since), and later notes (a reload's) as the CLI does. It stops with its parent
    however that ends (kill -9 included: uvicorn's workers would go on serving alone,
    holding the port), and leaves Ctrl-C to the parent, which stops every worker (a terminal
    sends it to them all; one arriving while a worker's interpreter still starts is its own).
    """
    from uvicorn.config import STARTUP_FAILURE

    from atlas.cli.main import show_note
    from atlas.server.app import create_app

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = json.loads(os.environ[WORKER_SETTINGS_ENV])
    _stop_with_parent(settings["parent"])
    told = set(settings["told"])

    def tell_news(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        if str(message) not in told:
            show_note(message, *args, **kwargs)

    warnings.showwarning = tell_news
    try:
        app = create_app(
            settings["location"],
            settings["timeout"],
            settings["index_memory_gb"],
            settings["memory_limit"],
        )
    except AtlasError as exc:  # the atlas changed since the parent opened it: the parent stops
        with contextlib.suppress(FileExistsError), open(settings["failure"], "x") as said:
            said.write(one_line(exc))  # unless another worker's says it already
        sys.exit(STARTUP_FAILURE)
    warnings.showwarning = show_note  # create_app's filters kept: a request's notes stay quiet
    return app


def _stop_with_parent(parent: int) -> None:
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1  # prctl(2): this signal when the parent thread ends
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it ended before that took hold
        sys.exit(0)


def default_workers() -> int:
    """A worker process per core this process may use, at most 8: eight clients on one
    process got 53-82% of what two cores allow, on two 73-100% (BENCHMARKS.md#server)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening before the address is printed: a client that
    connects as soon as it sees it waits in the backlog until a worker accepts (uvicorn listens
    only once it, or its first worker, has started: such a client was refused). One clear line
    if the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise AtlasError(f"cannot listen on {host!r}: {one_line(exc)}") from None
    family, kind, proto, _, address = infos[0]
    listening = socket.socket(family, kind, proto)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(BACKLOG)
    except OSError as exc:
        listening.close()
        raise AtlasError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
        ) from None
    listening.set_inheritable(True)  # the workers take it over
    return listening


def _resident_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:  # not Linux: the peak instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


COMMANDS = [serve]
