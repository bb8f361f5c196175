"""Atlas and bundle paths with spaces and non-ASCII characters, through the real CLI.

(An ingest into such a path runs in test_readers_during_ingest.py, a local model folder named
so in test_ingest_cli.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.helpers import run_cli

MODEL = "gpt2-like"  # one of ``small_atlas``'s small models: a bundle of it takes a second


def _search(root: Path) -> list[tuple[int, float]]:
    result = run_cli("--atlas", root, "search", "fire", "water", "-k", "8", "--model", MODEL,
                     "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [(hit["direction_id"], hit["score"]) for hit in json.loads(result.stdout)]


@pytest.mark.slow
def test_bundle_and_atlas_paths_with_spaces_and_non_ascii(
    small_atlas: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bündel mit Leerzeichen ü"
    folder.mkdir()
    bundle = folder / "gpt2 Ω 'quoted'.bundle"
    exported = run_cli("--atlas", small_atlas, "export", MODEL, "-o", bundle)
    assert exported.returncode == 0, exported.stderr
    assert str(bundle) in exported.stdout

    root = tmp_path / "атлас 'with' space"
    loaded = run_cli("--atlas", root, "load", bundle)
    assert loaded.returncode == 0, loaded.stderr

    count = f"SELECT count(*) AS n FROM directions WHERE model_id = '{MODEL}'"
    expected = json.loads(run_cli("--atlas", small_atlas, "sql", count, "--format", "json").stdout)
    assert expected[0]["n"] > 0
    for where in (root, bundle):  # the loaded atlas, and the bundle opened read-only
        result = run_cli("--atlas", where, "sql", count, "--format", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == expected
    assert _search(root) == _search(small_atlas) == _search(bundle)
    checked = run_cli("--atlas", root, "check")
    assert checked.returncode == 0, checked.stdout
