"""The ingest pipeline's stages (``ingest.pipeline.overlapped``), with fake stages that record
when each ran: on a GPU, loading block i+1 and writing block i-1 overlap computing block i,
with at most three blocks in flight; on the CPU they run in turn; a stage's failure surfaces
while compute is still running, and nothing of the pipeline runs on afterwards."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from ingest.pipeline import overlapped

STEP = 0.05  # seconds each fake stage takes


class Recorder:
    """Fake load/compute/write stages that log (stage, block, start, end)."""

    def __init__(self, fail: tuple[str, int] | None = None, compute_steps: int = 2):
        self.spans: list[tuple[str, int, float, float]] = []
        self.fail, self.compute_steps = fail, compute_steps
        self.lock = threading.Lock()

    def _span(self, stage: str, i: int, work: Any) -> Any:
        start = time.monotonic()
        try:
            if self.fail == (stage, i):
                raise RuntimeError(f"{stage} {i} failed")
            return work()
        finally:
            with self.lock:
                self.spans.append((stage, i, start, time.monotonic()))

    def load(self, i: int) -> int:
        return self._span("load", i, lambda: time.sleep(STEP) or i)

    def compute(self, i: int, weights: int, check: Any) -> int:
        assert weights == i

        def steps() -> int:
            for _ in range(self.compute_steps):
                time.sleep(STEP)
                check()
            return i

        return self._span("compute", i, steps)

    def write(self, rows: int) -> None:
        self._span("write", rows, lambda: time.sleep(STEP))

    def span(self, stage: str, i: int) -> tuple[float, float]:
        (got,) = [(s, e) for st, b, s, e in self.spans if (st, b) == (stage, i)]
        return got

    def in_flight(self) -> int:
        """The most blocks at once between the start of their load and the end of their
        write."""
        lives = [(self.span("load", i)[0], self.span("write", i)[1]) for i in self.blocks()]
        return max(sum(s <= t < e for s, e in lives) for t, _ in lives)

    def blocks(self) -> list[int]:
        return sorted({b for st, b, _, _ in self.spans if st == "write"})


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_overlap_loads_ahead_and_writes_behind_with_three_blocks_in_flight() -> None:
    n, fake = 6, Recorder()
    waits: dict[str, float] = {}
    overlapped(n, fake.load, fake.compute, fake.write, True, lambda w, s: waits.update({w: s}))
    assert fake.blocks() == list(range(n))
    for i in range(1, n - 1):
        assert overlaps(fake.span("load", i + 1), fake.span("compute", i)), i
        assert overlaps(fake.span("write", i - 1), fake.span("compute", i)), i
    assert fake.in_flight() <= 3
    for stage in ("load", "write"):  # one of each at a time
        spans = sorted(s[2:] for s in fake.spans if s[0] == stage)
        assert all(a[1] <= b[0] + 1e-3 for a, b in zip(spans, spans[1:], strict=False)), stage
    assert set(waits) == {"for_blocks", "for_writer"}


def test_without_overlap_the_stages_run_in_turn() -> None:
    fake = Recorder()
    overlapped(4, fake.load, fake.compute, fake.write, False)
    order = [(st, b) for st, b, _, _ in sorted(fake.spans, key=lambda s: s[2])]
    assert order == [(st, i) for i in range(4) for st in ("load", "compute", "write")]
    assert fake.in_flight() == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("svd-atlas-ingest")]


@pytest.mark.parametrize(
    "stage",
    ["write", pytest.param("load", marks=pytest.mark.slow)],  # slow: 2 s of timed steps
)
def test_a_stage_failure_surfaces_while_compute_runs_and_the_pipeline_stops(stage: str) -> None:
    """A long compute step checks between its steps: the failure of block 1's write (or block
    3's load) ends the pipeline within a step, not at the end of block 2's compute."""
    failing = 1 if stage == "write" else 3
    fake = Recorder(fail=(stage, failing), compute_steps=16)  # 0.8 s per block
    with pytest.raises(RuntimeError, match=f"{stage} {failing} failed"):
        overlapped(8, fake.load, fake.compute, fake.write, True)
    raised = time.monotonic()
    failed_at = fake.span(stage, failing)[1]
    assert raised - failed_at < 4 * STEP  # within a compute step or two, not the rest of the block
    time.sleep(3 * STEP)
    assert not [s for s in fake.spans if s[2] > raised]  # nothing started afterwards
    # the loads in flight when it failed, and no more
    assert max(b for st, b, _, _ in fake.spans if st == "load") <= 3
    assert not [t for t in threading.enumerate() if t.name.startswith("svd-atlas-ingest")]
