"""Waiting for a started CLI process and reading what it cost: its peak memory."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Ended:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes: the process's own high-water mark, from the kernel (wait4)


def finish(process: subprocess.Popen[str], timeout: float) -> Ended:
    """Wait up to ``timeout`` seconds for ``process`` (started with pipes, output small) to
    end; kill it and fail if it does not."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
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
    return Ended(process.returncode, out, err, usage.ru_maxrss * 1024)
