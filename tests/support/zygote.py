"""CLI processes forked from a warm parent, for tests of what a dying ingest leaves behind.

A real ``svd-atlas ingest`` process spends about 5 of its 6 seconds importing torch,
transformer_lens and transformers. The tests that kill ingests at chosen moments (kill -9,
planted crash points, two writers at once, a file-size limit) need real processes, not that
import. So one warm parent (the zygote) imports the model stack once per session and forks a
child per command: the child is a real process with its own pid, pipes, environment, resource
limits and signal dispositions, runs the CLI's real ``main`` and exits as the CLI does, so
signals, ``kill -9`` and exit codes are what a user's process would see. Only interpreter
start-up is shared. Tests of start-up itself (imports, peak memory) use ``start_cli``.

The test process talks to the zygote over a Unix socket: one connection per child, carrying
the request and the child's stdin, stdout and stderr (``SCM_RIGHTS``), then the child's pid
and, when it ends, its wait status (the zygote is its parent and reaps it).
"""

from __future__ import annotations

import atexit
import fcntl
import io
import json
import os
import pty
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
import traceback
from pathlib import Path
from typing import Any

WARM_MODULES = (
    "atlas.cli.main",
    "ingest.job",
    "atlas.models.random_models",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.llama.modeling_llama",
    "transformers.models.bert.modeling_bert",
)


# --- the zygote (``python -m tests.support.zygote SOCKET``) -------------------------------


def serve(path: str) -> None:
    """Accept requests until the test process goes away; fork a child for each."""
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)
    from atlas.cli.main import all_commands

    all_commands()  # each command's module, imported once here rather than in every child
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    print("ready", flush=True)
    children: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        readable, _, _ = select.select([listener], [], [], 0.02)
        if readable:
            conn, _ = listener.accept()
            pid = _fork_child(conn, [listener, *children.values()])
            children[pid] = conn
            conn.sendall(f"{pid}\n".encode())
        _reap(children)


def _fork_child(conn: socket.socket, others: list[socket.socket]) -> int:
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    request: dict[str, Any] = json.loads(message)
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    code = 1
    try:
        for sock in [conn, *others]:
            sock.close()
        code = _run_child(request, fds)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # what an uncaught exception prints in a real process
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # never back into the zygote's loop


def _run_child(request: dict[str, Any], fds: list[int]) -> int:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if "OMP_NUM_THREADS" in request["env"]:  # read by torch at start-up: set it as it would
        import torch

        torch.set_num_threads(int(request["env"]["OMP_NUM_THREADS"]))
    if request["file_size_limit"] is not None:
        limit = request["file_size_limit"]
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if request["kill_at"] is not None:
        from tests.support.kill_at import plant

        plant(request["kill_at"])
    from atlas.cli.main import cli

    cli(args=request["argv"], prog_name="svd-atlas")
    return 0


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        conn = children.pop(pid)
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        conn.close()


# --- the test process's side ----------------------------------------------------------


class WarmProcess:
    """A CLI child of the zygote, with the part of ``subprocess.Popen``'s interface the tests
    use (``pid``, ``stdout``/``stderr`` text pipes, ``poll``, ``wait``, ``communicate``,
    ``send_signal``, ``kill``, ``returncode``)."""

    def __init__(self, args: list[str], conn: socket.socket, stdout: int, stderr: int):
        self.args = ["svd-atlas", *args]
        self._conn = conn
        self._lines = conn.makefile("r")
        self.pid = int(self._lines.readline())
        self.stdout = open(stdout, encoding="utf-8", errors="replace")  # noqa: SIM115
        self.stderr = open(stderr, encoding="utf-8", errors="replace")  # noqa: SIM115
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._read_status()
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Read both pipes to their ends, then the exit status (the outputs are small)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out, err = self._drain(deadline)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return out, err

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _read_status(self) -> None:
        self.returncode = int(self._lines.readline())
        self._lines.close()
        self._conn.close()

    def _drain(self, deadline: float | None) -> tuple[str, str]:
        chunks: dict[int, list[bytes]] = {self.stdout.fileno(): [], self.stderr.fileno(): []}
        open_fds = list(chunks)
        while open_fds:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.kill()
                raise subprocess.TimeoutExpired(self.args, 0)
            for fd in select.select(open_fds, [], [], left)[0]:
                data = os.read(fd, 1 << 16)
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.remove(fd)
        out, err = (
            b"".join(chunks[f.fileno()]).decode(errors="replace")
            for f in (self.stdout, self.stderr)
        )
        self.stdout.close()
        self.stderr.close()
        return out, err


class Zygote:
    """The session's warm parent, started on first use and stopped when the tests end."""

    _instance: Zygote | None = None

    def __init__(self) -> None:
        self.socket_path = str(Path(tempfile.mkdtemp(prefix="svd-atlas-zygote-")) / "socket")
        from tests.support.helpers import cli_env

        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.zygote", self.socket_path],
            stdout=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the zygote did not start: see its stderr above")
        atexit.register(self.process.kill)

    @classmethod
    def get(cls) -> Zygote:
        if cls._instance is None or cls._instance.process.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def start(
        self,
        args: list[str],
        env: dict[str, str],
        file_size_limit: int | None = None,
        kill_at: str | None = None,
        terminal: bool = False,
    ) -> WarmProcess:
        out_read, out_write = os.pipe()
        err_read, err_write = pty.openpty() if terminal else os.pipe()
        if terminal:  # 24 rows of 100 columns, for progress bars
            fcntl.ioctl(err_write, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        stdin = os.open(os.devnull, os.O_RDONLY)
        request = {
            "argv": args,
            "env": env,
            "cwd": os.getcwd(),
            "file_size_limit": file_size_limit,
            "kill_at": kill_at,
        }
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.socket_path)
        socket.send_fds(conn, [json.dumps(request).encode()], [stdin, out_write, err_write])
        for fd in (stdin, out_write, err_write):
            os.close(fd)
        return WarmProcess(args, conn, out_read, err_read)


if __name__ == "__main__":
    serve(sys.argv[1])
