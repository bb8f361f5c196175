"""Signalling a started CLI process, waiting for it, and reading what it cost: its peak memory.

The process is reaped only by :func:`finish` (``wait4`` gives its resource usage): use
:func:`running` and :func:`interrupt` rather than ``Popen.poll`` and ``Popen.send_signal``,
which reap a process that has ended and lose it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Ended:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes: the process's own high-water mark (VmHWM), read while it ran


def running(process: subprocess.Popen[str]) -> bool:
    """Whether ``process`` has not ended (it is not reaped)."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    return os.waitid(os.P_PID, process.pid, flags) is None


def interrupt(process: subprocess.Popen[str]) -> None:
    """Ctrl-C: SIGINT (harmless to a process that has ended and is not reaped yet)."""
    os.kill(process.pid, signal.SIGINT)


def finish(process: subprocess.Popen[str], timeout: float) -> Ended:
    """Wait up to ``timeout`` seconds for ``process`` (started with pipes, output small) to
    end; kill it and fail if it does not.

    The peak is the kernel's high-water mark of the process's memory, read until it exits
    (``wait4``'s ``ru_maxrss`` will not do: after a fork and exec it counts the parent's).
    """
    deadline = time.monotonic() + timeout
    peak = 0
    while True:
        peak = max(peak, _high_water_mark(process.pid))
        pid, status = os.waitpid(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"{process.args} did not exit within {timeout} s")
        time.sleep(0.01)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    return Ended(process.returncode, out, err, peak)


def _high_water_mark(pid: int) -> int:
    """VmHWM of a running process in bytes (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
