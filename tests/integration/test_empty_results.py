"""Issue 23: a search or trace that can match nothing says so (which word, layer or head, in
which models), in the CLI, the library and over HTTP; and a token as the atlas displays it
searches back to itself."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import atlas
from atlas.core.errors import AtlasWarning, NoMatch
from atlas.server.app import create_app
from query.vectors import word_tokens
from tests.support.helpers import assert_one_error_line, run_cli
from tests.support.planted import gpt2_style, minilm_vocab_words, small_model
from tests.support.tiny_models import ingest_loaded, tiny_gpt2


@pytest.fixture(scope="module")
def two_models(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM (word pieces, 6 layers, 12 heads) and a tiny GPT-2 (3 layers, 4 heads)."""
    root = tmp_path_factory.mktemp("two") / "atlas"
    shutil.copytree(minilm_atlas, root)
    ingest_loaded(root, tiny_gpt2(n_layers=3), "tiny")
    return root


@pytest.fixture(scope="module")
def client(two_models: Path) -> Iterator[TestClient]:
    with TestClient(create_app(str(two_models))) as c:
        yield c


def model_ranges(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """The oracle: each model's layer and head range, straight from its directions."""
    with atlas.open(root) as a:
        rows = a.sql(
            "SELECT model_id, min(layer) AS l0, max(layer) AS l1, min(head) AS h0, "
            "max(head) AS h1 FROM directions GROUP BY model_id"
        ).to_pylist()
    return {r["model_id"]: (r["l0"], r["l1"], r["h0"], r["h1"]) for r in rows}


UNKNOWN_WORDS = ["xyzzyplugh", "🔥"]


@pytest.mark.parametrize("word", UNKNOWN_WORDS)
def test_an_unknown_word_across_models_is_one_error_naming_them(
    two_models: Path, client: TestClient, word: str
) -> None:
    err = assert_one_error_line(run_cli("--atlas", two_models, "search", word))
    assert word in err and "minilm" in err and "tiny" in err
    with atlas.open(two_models) as a:
        for space in ("auto", "token", "residual"):
            with pytest.raises(NoMatch, match="minilm or tiny"):
                a.search(word, space=space)
    response = client.get("/api/search", params={"text": word})
    assert response.status_code == 400
    assert word in response.json()["error"] and "tiny" in response.json()["error"]


def test_a_word_some_vocabularies_lack_is_a_note(two_models: Path) -> None:
    with atlas.open(two_models) as a, pytest.warns(AtlasWarning, match="xyzzyplugh"):
        hits = a.search("fire xyzzyplugh", k=3)
    assert hits and any("xyzzyplugh" in n for n in hits.notes)


@pytest.mark.parametrize(
    ("options", "library", "query", "what"),
    [
        (["--layer", "99"], {"layer": 99}, {"layer": "99"}, "layer 99"),
        (["--head", "99"], {"head": 99}, {"head": "99"}, "head 99"),
        (["--layer", "50:60"], {"layer": (50, 60)}, {"layer": "50:60"}, "layers 50:60"),
    ],
)
def test_a_layer_or_head_no_model_has_is_one_error_with_their_ranges(
    two_models: Path,
    client: TestClient,
    options: list[str],
    library: dict[str, object],
    query: dict[str, str],
    what: str,
) -> None:
    ranges = model_ranges(two_models)
    kind = "layers" if "layer" in what else "heads"
    expected = {
        m: f"{m} has {kind} {lo}-{hi}"
        for m, (l0, l1, h0, h1) in ranges.items()
        for lo, hi in [(l0, l1) if kind == "layers" else (h0, h1)]
    }
    for command in (["search", "fire"], ["trace", "432"]):
        err = assert_one_error_line(run_cli("--atlas", two_models, *command, *options))
        assert what in err and all(text in err for text in expected.values()), err
    with atlas.open(two_models) as a:
        with pytest.raises(NoMatch, match=what):
            a.search("fire", **library)  # type: ignore[arg-type]
        with pytest.raises(NoMatch, match=what):
            a.trace(432, **library)  # type: ignore[arg-type]
    for url, params in (("/api/search", {"text": "fire"}), ("/api/directions/432/trace", {})):
        response = client.get(url, params={**params, **query})
        assert response.status_code == 400 and what in response.json()["error"]


def test_filters_that_match_only_apart_say_so(two_models: Path) -> None:
    err = assert_one_error_line(
        run_cli("--atlas", two_models, "search", "fire", "--kind", "mlp_in", "--head", "1")
    )
    assert "together" in err and "kind mlp_in" in err and "head 1" in err


def test_an_empty_result_that_could_have_matched_is_a_note_and_exit_zero(two_models: Path) -> None:
    result = run_cli("--atlas", two_models, "search", "fire", "--min-score", "1")
    assert result.returncode == 0, result.stderr
    assert "note: no direction scored |cos| >= 1" in result.stderr
    with atlas.open(two_models) as a, pytest.warns(AtlasWarning, match="scored"):
        assert a.search("fire", min_score=1.0) == []


def sample_tokens(root: Path, model_id: str) -> list[dict[str, object]]:
    """Every 37th vocabulary entry whose display is one searchable word (no space or comma:
    those separate words of a query)."""
    with atlas.open(root) as a:
        rows = a.sql(
            "SELECT token_id, token, token_display FROM vocab WHERE model_id = ? "
            "AND token_id % 37 = 0 AND NOT regexp_matches(token_display, '[\\s,]') "
            "AND token_norm <> ''",
            [model_id],
        ).to_pylist()
    assert len(rows) > 50
    return rows


@pytest.fixture(scope="module")
def gpt2_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level-BPE-style vocabulary (``Ġfire`` and ``fire``), whose display forms are
    ``fire`` and ``-fire``."""
    root = tmp_path_factory.mktemp("gpt2style") / "atlas"
    ingest_loaded(root, small_model(gpt2_style(minilm_vocab_words(3000)), 3, "bpe"), "bpe")
    return root


@pytest.mark.parametrize("which", ["minilm", "bpe"])
def test_every_displayed_token_searches_back_to_itself(
    minilm_atlas: Path, gpt2_atlas: Path, which: str
) -> None:
    root = minilm_atlas if which == "minilm" else gpt2_atlas
    rows = sample_tokens(root, which)
    assert any(str(r["token_display"]).startswith("-") for r in rows)  # continuations shown
    with atlas.open(root) as a:
        found = word_tokens(a.reader, which, [str(r["token_display"]) for r in rows])
        for r in rows:
            assert r["token_id"] in found[str(r["token_display"])].ids, r


def test_a_continuation_as_displayed_is_searched_as_that_token(minilm_atlas: Path) -> None:
    """``-fire`` is the word piece ``##fire``: the query is its centered unembedding alone
    (brute force over every stored vector is the oracle), not the word ``fire``'s."""
    with atlas.open(minilm_atlas) as a:
        (piece,) = a.sql("SELECT token_id FROM vocab WHERE token = '##fire'").to_pylist()
        q = a.reader.unembedding("minilm")[piece["token_id"]].astype(np.float64)
        rows = a.sql("SELECT direction_id, vector FROM directions ORDER BY direction_id")
        vectors = np.array(rows["vector"].to_pylist(), np.float64)
        cos = vectors @ (q / np.linalg.norm(q))
        best = rows["direction_id"].to_numpy()[np.argsort(-np.abs(cos))[:3]]
        hits = a.search("-fire", k=3)
        assert [h.direction_id for h in hits] == best.tolist()
        assert hits[0].score == pytest.approx(float(np.abs(cos).max()), abs=1e-4)
        assert [h.direction_id for h in a.search("fire", k=3)] != best.tolist()
    result = run_cli("--atlas", minilm_atlas, "search", "-k", "3", "--", "-fire")
    assert result.returncode == 0 and "not in" not in result.stderr, result.stderr
