"""Atlas and bundle paths with spaces and non-ASCII characters, through the real CLI.

(An ingest into such a path runs in test_readers_during_ingest.py, a local model folder named
so in test_ingest_cli.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.helpers import run_cli


def _search(root: Path) -> list[tuple[int, float]]:
    result = run_cli("--atlas", root, "search", "fire", "water", "-k", "8", "--format", "json")
    assert result.returncode == 0, result.stderr
    return [(hit["direction_id"], hit["score"]) for hit in json.loads(result.stdout)]


@pytest.mark.slow
def test_bundle_and_atlas_paths_with_spaces_and_non_ascii(
    minilm_atlas: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bündel mit Leerzeichen ü"
    folder.mkdir()
    bundle = folder / "minilm Ω 'quoted'.bundle"
    exported = run_cli("--atlas", minilm_atlas, "export", "minilm", "-o", bundle)
    assert exported.returncode == 0, exported.stderr
    assert str(bundle) in exported.stdout

    root = tmp_path / "атлас 'with' space"
    loaded = run_cli("--atlas", root, "load", bundle)
    assert loaded.returncode == 0, loaded.stderr

    count = "SELECT count(*) AS n FROM directions"
    for where in (root, bundle):  # the loaded atlas, and the bundle opened read-only
        result = run_cli("--atlas", where, "sql", count, "--format", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [{"n": 13824}]
    assert _search(root) == _search(minilm_atlas) == _search(bundle)
    checked = run_cli("--atlas", root, "check")
    assert checked.returncode == 0, checked.stdout
