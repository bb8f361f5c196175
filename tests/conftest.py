"""Shared fixtures: atlases are built once per session, in-process, on the CPU."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration boots models or runs the CLI: it is ``slow``."""
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def minilm_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An atlas holding the bundled MiniLM, ingested with default options and --coherence."""
    from ingest.job import IngestOptions, ingest
    from tests.support.helpers import quiet

    root = tmp_path_factory.mktemp("minilm") / "atlas"
    options = IngestOptions(model="minilm", device="cpu", coherence=True)
    ingest(root, options, log=quiet, progress=False)
    return root


@pytest.fixture
def atlas_copy(minilm_atlas: Path, tmp_path: Path) -> Path:
    """A private copy of the session's MiniLM atlas, for tests that change or damage it."""
    root = tmp_path / "atlas"
    shutil.copytree(minilm_atlas, root)
    return root
