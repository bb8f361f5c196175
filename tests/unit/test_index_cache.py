"""The reader's index cache: pinned indexes stay, one other is held at a time, and reading one
model's index never holds up searches of another."""

from __future__ import annotations

import threading
import time
from collections import Counter

from atlas.core.reader import IndexCache


def test_pinned_indexes_stay_and_one_other_is_held() -> None:
    reads: Counter[str] = Counter()
    cache = IndexCache()

    def loader(model: str):  # type: ignore[no-untyped-def]
        def load() -> tuple[str, int]:
            reads[model] += 1
            return f"index of {model}", 10

        return load

    cache.pin("a", loader("a"))
    for _ in range(3):  # a search across five models, three times
        for model in "abcde":
            assert cache.get(model, loader(model)) == f"index of {model}"
    assert reads == {"a": 1, "b": 3, "c": 3, "d": 3, "e": 3}  # the pinned one was read once
    assert cache.cached() == ["a", "e"]  # and only the last other one is held
    assert cache.get("e", loader("e")) == "index of e" and reads["e"] == 3
    cache.clear()
    assert cache.cached() == []


def test_a_slow_read_does_not_hold_up_other_models() -> None:
    cache = IndexCache()
    cache.pin("fast", lambda: ("fast index", 1))
    started = threading.Event()

    def slow() -> tuple[str, int]:
        started.set()
        time.sleep(1.0)
        return "slow index", 1

    reader = threading.Thread(target=lambda: cache.get("slow", slow))
    reader.start()
    started.wait(5)
    begin = time.monotonic()
    assert cache.get("fast", lambda: ("never read", 1)) == "fast index"
    assert time.monotonic() - begin < 0.5
    reader.join()
    assert cache.get("slow", lambda: ("read twice", 1)) == "slow index"
