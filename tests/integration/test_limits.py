"""Issue 23: k, hops and limit have one set of bounds in the CLI, the library and over HTTP;
a trace returns at most ``limit`` rows and says when it was cut; long traces show progress."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import atlas
from atlas.cli import progress as progress_module
from atlas.cli.progress import HopProgress
from atlas.core.errors import AtlasError, AtlasWarning
from atlas.params import MAX_HOPS, MAX_K, MAX_TRACE_ROWS
from atlas.server.app import create_app
from tests.support.helpers import run_cli


@pytest.fixture(scope="module")
def client(minilm_atlas: Path) -> Iterator[TestClient]:
    with TestClient(create_app(str(minilm_atlas))) as c:
        yield c


@dataclass(frozen=True)
class Bound:
    name: str
    low: int
    high: int


# (bound, CLI arguments before the value, library call, HTTP url and parameter)
CASES = [
    (Bound("k", 1, MAX_K), ["search", "fire", "-k"], lambda a, v: a.search("fire", k=v),
     "/api/search?text=fire", "k"),
    (Bound("hops", 1, MAX_HOPS), ["trace", "432", "--hops"],
     lambda a, v: a.trace(432, hops=v, limit=1), "/api/directions/432/trace?limit=1", "hops"),
    (Bound("limit", 1, MAX_TRACE_ROWS), ["trace", "432", "--limit"],
     lambda a, v: a.trace(432, limit=v), "/api/directions/432/trace?min_cos=0.9", "limit"),
]  # fmt: skip


@pytest.mark.parametrize(("bound", "cli", "call", "url", "param"), CASES)
def test_each_bound_is_the_same_in_every_interface(
    minilm_atlas: Path, client: TestClient, bound: Any, cli: list[str], call: Any, url: str,
    param: str,
) -> None:  # fmt: skip
    with atlas.open(minilm_atlas) as a:
        for value in (bound.low - 1, bound.high + 1):
            assert run_cli("--atlas", minilm_atlas, *cli, str(value)).returncode == 2
            with pytest.raises(AtlasError, match=f"{bound.name}: Input should be") as refused:
                call(a, value)
            assert refused.value.param == bound.name
            response = client.get(f"{url}&{param}={value}")
            assert response.status_code == 400, response.text
        # the extremes themselves are accepted everywhere
        for value in (bound.low, bound.high):
            call(a, value)
            assert client.get(f"{url}&{param}={value}").status_code == 200
    accepted = run_cli("--atlas", minilm_atlas, *cli, str(bound.high), "--format", "json")
    assert accepted.returncode == 0, accepted.stderr


def test_trace_returns_at_most_limit_rows_and_notes_the_cut(
    minilm_atlas: Path, client: TestClient
) -> None:
    with atlas.open(minilm_atlas) as a:
        with pytest.warns(AtlasWarning, match="cut at the limit of 10"):
            steps = a.trace(432, min_cos=0.1, hops=3, limit=10)
        assert len(steps) == 10 and steps.notes
        assert sum(s.hop == 0 for s in steps) == 1  # the origin is one of the ten
        # the ten kept are the strongest of hop 1: an unlimited trace's best nine and the origin
        full = a.trace(432, min_cos=0.1, hops=1, limit=MAX_TRACE_ROWS)
        best = sorted((s for s in full if s.hop == 1), key=lambda s: -s.hit.score)[:9]
        assert {s.hit.direction_id for s in steps if s.hop == 1} == {
            s.hit.direction_id for s in best
        }
        loose = a.trace(432, min_cos=0.9, hops=2, limit=10)  # nothing passes: no cut
        assert len(loose) == 1 and "no direction has |cos| >= 0.9" in loose.notes[0]
    result = run_cli("--atlas", minilm_atlas, "trace", "432", "--min-cos", "0.1", "--limit",
                     "10", "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 10
    assert "note: cut at the limit of 10 directions" in result.stderr
    body = client.get("/api/directions/432/trace?min_cos=0.1&limit=10").json()
    assert len(body["steps"]) == 10 and body["notes"] == steps.notes  # cut at hop 1 alike


def test_a_trace_under_its_limit_is_not_cut(minilm_atlas: Path) -> None:
    with atlas.open(minilm_atlas) as a:
        steps = a.trace(432, min_cos=0.2, hops=2, limit=MAX_TRACE_ROWS)
    assert 1 < len(steps) < MAX_TRACE_ROWS and steps.notes == []


def test_trace_tells_its_progress_hop_by_hop(minilm_atlas: Path) -> None:
    calls: list[tuple[int, int, int]] = []
    with atlas.open(minilm_atlas) as a:
        steps = a.trace(432, min_cos=0.2, hops=2, limit=50, progress=lambda *c: calls.append(c))
    first = [c for c in calls if c[0] == 1]
    second = [c for c in calls if c[0] == 2]
    assert first == [(1, 1, 1)]  # hop 1 expands the origin
    expanded = sum(s.hop == 1 for s in steps)  # hop 2 expands every direction hop 1 found
    assert [c[1] for c in second] == list(range(1, expanded + 1))
    assert {c[2] for c in second} == {expanded}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_go_to_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "DELAY", 0.0)
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        with HopProgress(stream) as bar:
            for hop in (1, 2):
                for done in range(1, 4):
                    bar(hop, done, 3)
    assert "trace hop 1" in terminal.getvalue() and "trace hop 2" in terminal.getvalue()
    assert pipe.getvalue() == ""
