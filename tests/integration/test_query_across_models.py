"""Search across several models in residual space, streamed model by model: the merged top k
equals a brute-force numpy scan of every model's vectors with each model's own query vector,
and memory holds one model's index at a time when the cache is too small for more."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import atlas
from atlas.core.errors import AtlasError
from query.filters import Filters
from query.search import resolve_query, search
from query.vectors import text_residual_vector
from tests.support.atlas_compare import vectors
from tests.support.tiny_models import ingest_loaded, tiny_gpt2


@pytest.fixture(scope="module")
def zoo(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM (d_model 384) and two tiny GPT-2s (d_model 64) of different seeds."""
    root = tmp_path_factory.mktemp("zoo") / "atlas"
    shutil.copytree(minilm_atlas, root)
    ingest_loaded(root, tiny_gpt2(seed=1), "tiny-1")
    ingest_loaded(root, tiny_gpt2(seed=2), "tiny-2")
    return root


def _brute_force(a: atlas.Atlas, queries: dict[str, np.ndarray], k: int) -> list[tuple[int, int]]:
    """(direction_id, sign) of the k largest |cos| over every model, each scanned with numpy."""
    scored = []
    for model_id, q in queries.items():
        ids, vecs = vectors(a, model_id)
        sims = vecs @ q
        scored += [
            (abs(float(s)), int(i), 1 if s >= 0 else -1) for i, s in zip(ids, sims, strict=True)
        ]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [(i, sign) for _, i, sign in scored[:k]]


@pytest.mark.parametrize("words", ["fire", "water, ocean"])
def test_words_in_every_models_residual_space_equal_brute_force(zoo: Path, words: str) -> None:
    with atlas.open(zoo) as a:
        hits = a.search(words, space="residual", k=25)
        queries = {
            m: text_residual_vector(a.reader, m, [w.strip() for w in words.split(",")])[0]
            for m in a.model_ids()
        }
        assert [(h.direction_id, h.sign) for h in hits] == _brute_force(a, queries, 25)
        assert len({h.model_id for h in hits}) >= 2  # the merge really crosses models


def test_a_vector_searches_the_models_of_its_width(zoo: Path) -> None:
    q = np.random.default_rng(3).standard_normal(64).astype(np.float32)
    with atlas.open(zoo) as a:
        with pytest.warns(atlas.core.errors.AtlasWarning, match="d_model is not 64.*minilm"):
            hits = a.search(vector=q, k=30)
        unit = q / np.linalg.norm(q)
        expected = _brute_force(a, {"tiny-1": unit, "tiny-2": unit}, 30)
        assert [(h.direction_id, h.sign) for h in hits] == expected
        with pytest.raises(AtlasError, match="holds 10 values; the models searched have d_model"):
            a.search(vector=np.ones(10), k=3)


def _mapped_unembeddings(root: Path) -> int:
    """How many of the unembedding files under ``root`` this process has memory-mapped now
    (Linux's own account; other tests' handles may map other atlases')."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps (Linux) to see what the process has mapped")
    lines = maps.read_text().splitlines()
    return len({line.split()[-1] for line in lines if str(root) in line and "unembed" in line})


def test_streaming_holds_one_index_at_a_time_and_finds_the_same(zoo: Path) -> None:
    with atlas.open(zoo) as a:  # a handle keeps only the index it used last
        streamed = a.search("fire", space="residual", k=40, kind="ov")
        unfiltered = a.search("fire", space="residual", k=40)
        assert len(a.loaded_indexes()) == 1
        assert _mapped_unembeddings(zoo) == 0  # the rows a query needed were read, then unmapped
    with atlas.open(zoo) as a:  # what a server does: every index loaded, kept
        a.load_indexes(1 << 30)
        assert sorted(a.loaded_indexes()) == sorted(a.model_ids())
        assert _mapped_unembeddings(zoo) == 3
        assert a.search("fire", space="residual", k=40, kind="ov") == streamed
        assert a.search("fire", space="residual", k=40) == unfiltered
        assert sorted(a.loaded_indexes()) == sorted(a.model_ids())
    with atlas.open(zoo) as a:  # a budget too small for MiniLM's: the tiny ones are kept
        tiny = a.reader.index_bytes("tiny-1") + a.reader.index_bytes("tiny-2")
        assert tiny < a.reader.index_bytes("minilm")
        a.load_indexes(tiny)
        assert a.loaded_indexes() == ["tiny-1", "tiny-2"]
        assert a.search("fire", space="residual", k=40) == unfiltered
        assert a.loaded_indexes() == ["tiny-1", "tiny-2", "minilm"]  # streamed, then held last


def test_models_without_vectors_are_left_out_with_a_note(zoo: Path, tmp_path: Path) -> None:
    """tiny-1 loaded from a --vectors none bundle, tiny-2 with its vectors: a vector search
    across both searches tiny-2 and says it left tiny-1 out."""
    from atlas.core.exchange.load import load_bundle

    mixed = tmp_path / "mixed"
    with atlas.open(zoo) as a:
        a.export(tmp_path / "none.bundle", ["tiny-1"], vectors="none")
        a.export(tmp_path / "full.bundle", ["tiny-2"])
    load_bundle(mixed, tmp_path / "none.bundle")
    load_bundle(mixed, tmp_path / "full.bundle")
    q = np.random.default_rng(4).standard_normal(64).astype(np.float32)
    with atlas.open(mixed) as a:
        with pytest.warns(atlas.core.errors.AtlasWarning, match="no vectors here.*tiny-1"):
            hits = a.search(vector=q, k=10)
        expected = _brute_force(a, {"tiny-2": q / np.linalg.norm(q)}, 10)
        assert [(h.direction_id, h.sign) for h in hits] == expected


def test_token_space_across_models_is_unchanged_by_default(zoo: Path) -> None:
    """Several models and no --space: token space, as before (each model's bags scanned by
    DuckDB, merged exactly)."""
    with atlas.open(zoo) as a:
        query = resolve_query(a.reader, text="fire")
        assert query.space == "token" and sorted(query.models) == sorted(a.model_ids())
        merged = search(a.reader, query, Filters(), k=20)
        per_model = [h for m in a.model_ids() for h in a.search("fire", model=m, space="token",
                                                                 k=20)]  # fmt: skip
        per_model.sort(key=lambda h: (-h.score, h.direction_id))
        assert [h.direction_id for h in merged] == [h.direction_id for h in per_model[:20]]
