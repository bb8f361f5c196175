"""Readers in other processes keep working while ``svd-atlas ingest --replace`` runs.

The atlas lives under a path with a space and non-ASCII characters. Reader processes run
``sql`` and ``search`` in a loop during the ingest; one handle opened before the ingest is held
in this process until after it. Every call must succeed (no DuckDB lock error) and see one
consistent state: the old MiniLM (all ranks) or the new one (--max-rank 4), never a mix, and
never the old one again once it has seen the new one.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

import atlas
from atlas.core.check import check_atlas
from tests.support.helpers import SINGLE_THREAD, run_cli_process, start_warm_cli

pytestmark = pytest.mark.slow  # readers beside a real ingest process

OLD = {"minilm": 13824}
NEW = {"minilm": 4 * (72 * 4 + 12)}  # ov and qk: two sides each
COUNT = "SELECT model_id, count(*) AS n FROM directions GROUP BY model_id ORDER BY model_id"


class Reader(threading.Thread):
    """Runs one read command (a process of its own, as a second user would) in a loop until
    ``stop`` is set; keeps what every call saw."""

    def __init__(self, root: Path, command: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.root, self.command, self.stop = root, command, stop
        self.seen: list[str] = []
        self.failures: list[str] = []

    def call(self) -> str:
        if self.command == "sql":
            result = run_cli_process(
                "--atlas", self.root, "sql", COUNT, "--format", "json", env=SINGLE_THREAD
            )
        else:
            result = run_cli_process(
                "--atlas", self.root, "search", "fire", "-k", "5", "--format", "json",
                env=SINGLE_THREAD,
            )  # fmt: skip
        if result.returncode != 0 or "lock" in result.stderr.lower():
            self.failures.append(result.stderr)
            return "failed"
        rows = json.loads(result.stdout)
        if self.command == "sql":
            counts = {r["model_id"]: r["n"] for r in rows}
            return "old" if counts == OLD else "new" if counts == NEW else f"mixed {counts}"
        ids = {r["direction_id"] for r in rows}
        if len(rows) == 5 and all(i < 13824 for i in ids):
            return "old"
        if len(rows) == 5 and all(13824 <= i < 13824 + NEW["minilm"] for i in ids):
            return "new"
        return f"mixed {sorted(ids)}"

    def run(self) -> None:
        while not self.stop.is_set():
            self.seen.append(self.call())


def test_readers_during_replace_ingest(minilm_atlas: Path, tmp_path: Path) -> None:
    root = tmp_path / "my atlas ü"
    shutil.copytree(minilm_atlas, root)
    held = atlas.open(root)
    held_hits = held.search("fire", k=5)
    stop = threading.Event()
    readers = [Reader(root, command, stop) for command in ("sql", "search")]
    start = time.monotonic()
    ingest = start_warm_cli(
        "--atlas", root, "ingest", "minilm", "--replace", "--max-rank", "4", env=SINGLE_THREAD
    )
    for reader in readers:
        reader.start()
    _, err = ingest.communicate(timeout=300)
    stop.set()
    for reader in readers:
        reader.join(timeout=60)
    held_seconds = time.monotonic() - start
    assert ingest.returncode == 0, err

    calls = [s for r in readers for s in r.seen]
    print(f"{len(readers)} reader processes, {len(calls)} calls in {held_seconds:.1f} s")
    assert not [f for r in readers for f in r.failures]
    assert len(calls) >= 2 * len(readers) and "old" in calls
    for reader in readers:
        assert set(reader.seen) <= {"old", "new"}, reader.seen
        first_new = reader.seen.index("new") if "new" in reader.seen else len(reader.seen)
        assert "old" not in reader.seen[first_new:], reader.seen
        assert reader.call() == "new"  # after the ingest every reader sees the new model

    # the handle held through the whole ingest still reads the old store, unchanged
    assert held.sql(COUNT).to_pylist() == [{"model_id": "minilm", "n": 13824}]
    assert [h.direction_id for h in held.search("fire", k=5)] == [h.direction_id for h in held_hits]
    held.close()
    report = check_atlas(root)
    assert report.ok, [f.line() for f in report.errors]
