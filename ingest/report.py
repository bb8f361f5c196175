"""What an ingest reports: rows written, busy seconds per stage, waits, memory, size."""

from __future__ import annotations

import resource
import threading
import time
from dataclasses import dataclass, field

import torch

STAGES = ("boot", "load", "decompose", "project", "compose", "score", "write", "finish")


@dataclass
class IngestReport:
    model_id: str
    counts: dict[str, int]
    device: str = "cpu"
    stage_seconds: dict[str, float] = field(default_factory=dict)  # busy time per stage
    wall_seconds: float = 0.0
    # seconds the compute stage waited: for the next block to load, for the writer to drain
    waiting: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float = 0.0
    size_bytes: int = 0
    skipped: list[str] = field(default_factory=list)


class Timer:
    """Adds up the busy seconds of each stage (stages overlap in the pipeline)."""

    def __init__(self, report: IngestReport):
        self.report = report
        self.lock = threading.Lock()

    def __call__(self, stage: str) -> Span:
        return Span(self, stage)

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            total = self.report.stage_seconds.get(stage, 0.0) + seconds
            self.report.stage_seconds[stage] = round(total, 3)


class Span:
    def __init__(self, timer: Timer, stage: str):
        self.timer, self.stage = timer, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        if self.timer.report.device == "cuda":
            torch.cuda.synchronize()
        self.timer.add(self.stage, time.perf_counter() - self.start)


def peak_rss_mb() -> float:
    """The process's peak resident memory, in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
