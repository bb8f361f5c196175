"""Shared fixtures: atlases are built once per session, in-process, on the CPU.

Tiers: ``pytest -m "not slow"`` is the fast tier (every layer: the math against numpy, storage,
the SQL guard, search against brute force, the CLI in-process, the HTTP API); ``slow`` marks,
test by test, what boots a model in a subprocess, kills processes, starts Ray or a browser, or
needs the coherence scorer. See tests/README.md.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# OpenMP threads that wait by sleeping, not spinning: set before torch or FAISS starts its
# runtime (both do, in one process). A spinning pool holds a core that the other pool, a
# server thread or a CLI subprocess needs: on 2 cores FAISS's recall scans ran 3x slower
# after torch had worked (tests/unit/test_indexes.py after test_oracle_folders.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker per core: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ctrl-C as a terminal gives it, for the tests of Ctrl-C (in this process, and in the CLI
# processes it starts, which inherit an ignored SIGINT): a shell without job control starts a
# background job (`pytest &`, a CI script's) with SIGINT ignored, and Python keeps it so.
signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject.toml): one process for a single file or test, where starting
    workers costs more than it saves; otherwise a worker per CPU this process may use (not
    pytest-xdist's count of physical cores, which a hyper-threaded machine halves)."""
    targets = {str(arg).split("::")[0] for arg in config.args}
    if len(targets) == 1 and next(iter(targets)).endswith(".py"):
        return 0
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules that use ``small_atlas`` first, each kept whole (its module fixtures are set
    up once): pytest-xdist (``--dist worksteal``) hands each worker a run of consecutive tests
    to start with, so the first worker builds the small atlas while the second builds MiniLM,
    instead of one waiting for the other's."""
    uses_small = {
        item.module for item in items if {"small_atlas", "small_copy"} & set(item.fixturenames)
    }
    items.sort(key=lambda item: item.module not in uses_small)  # stable: the order within


def _built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A session atlas built once per run: under pytest-xdist the first worker that needs it
    builds it in the run's folder (above each worker's own) and the others wait for it and share
    it (pytest-xdist's documented recipe), instead of each building its own on the same cores."""
    base = factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    built = shared / "built"
    with FileLock(f"{shared}.lock"):
        if not built.exists():
            shutil.rmtree(shared, ignore_errors=True)  # a worker that failed half-way
            shared.mkdir()
            build(shared / "atlas")
            built.touch()
    return shared / "atlas"


@pytest.fixture(scope="session")
def minilm_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An atlas holding the bundled MiniLM, ingested with default options (no coherence: the
    README's atlas). Read-only for tests: change a copy (``atlas_copy``)."""
    import atlas

    def build(root: Path) -> None:
        atlas.ingest(root, "minilm", device="cpu")

    return _built_once(tmp_path_factory, "minilm", build)


@pytest.fixture(scope="session")
def small_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's everyday atlas, built in seconds: two small models with a head planted to
    write "fire" (``PLANTS``; a BERT-like word-piece and a GPT-2-like ``Ġword`` vocabulary) and
    ``random:llama-tiny`` (grouped-query attention, gated MLP, untied unembedding). Read-only
    for tests: change a copy (``small_copy``)."""
    import atlas
    from ingest.job import IngestOptions, ingest
    from tests.support.helpers import quiet
    from tests.support.planted import planted_models

    def build(root: Path) -> None:
        for name, loaded in planted_models().items():  # built in memory: below the façade
            options = IngestOptions(model=name, device="cpu")
            ingest(root, options, loaded=loaded, log=quiet)
        atlas.ingest(root, "random:llama-tiny", name="llama-tiny", device="cpu")

    return _built_once(tmp_path_factory, "small", build)


@pytest.fixture
def small_copy(small_atlas: Path, tmp_path: Path) -> Path:
    """A private copy of ``small_atlas`` (40 MB, mostly llama-tiny's unembedding), for tests
    that change or damage it."""
    root = tmp_path / "atlas"
    shutil.copytree(small_atlas, root)
    return root


@pytest.fixture(scope="session")
def minilm_coherence_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM ingested with ``--coherence`` (tens of seconds more): for coherence's tests only."""
    import atlas

    def build(root: Path) -> None:
        atlas.ingest(root, "minilm", device="cpu", coherence=True)

    return _built_once(tmp_path_factory, "minilm-coherence", build)


@pytest.fixture
def atlas_copy(minilm_atlas: Path, tmp_path: Path) -> Path:
    """A private copy of the session's MiniLM atlas, for tests that change or damage it."""
    root = tmp_path / "atlas"
    shutil.copytree(minilm_atlas, root)
    return root


@pytest.fixture(scope="session")
def two_models(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM (ids 0..9215) and a tiny GPT-2 after it, in one atlas. Read-only: see ``two``."""
    from tests.support.tiny_models import ingest_loaded, tiny_gpt2

    def build(root: Path) -> None:
        shutil.copytree(minilm_atlas, root)
        ingest_loaded(root, tiny_gpt2(), "tiny")

    return _built_once(tmp_path_factory, "two", build)


@pytest.fixture
def two(two_models: Path, tmp_path: Path) -> Path:
    """A private copy of ``two_models``, for tests that damage one of the two."""
    root = tmp_path / "atlas"
    shutil.copytree(two_models, root)
    return root
