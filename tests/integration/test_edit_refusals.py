"""Issue 23: ``edit`` refuses an eps that breaks the forward pass (one line: why, and the sensible
range) instead of reporting p = 1/vocabulary at rank 0, and refuses an architecture it cannot
measure from the atlas's ``models`` table, before booting anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import atlas
from atlas.core.errors import AtlasError, BadParameter
from query.probe import broken_distribution
from tests.support.helpers import assert_one_error_line, run_cli

# slow: boots random models to measure an edit's logits
pytestmark = pytest.mark.slow


def test_a_bidirectional_model_is_refused_before_it_is_booted(
    minilm_atlas: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import atlas.models.loading

    def no_boot(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("edit booted a model it could have refused from the atlas")

    monkeypatch.setattr(atlas.models.loading, "load_model", no_boot)
    args = ["--direction", "0", "--eps", "-1", "--prompt", "the fire", "--target", "burns"]
    err = assert_one_error_line(run_cli("--atlas", minilm_atlas, "edit", "minilm", *args))
    assert "BertForMaskedLM" in err and "not a causal language model" in err
    with atlas.open(minilm_atlas) as a, pytest.raises(AtlasError, match="bidirectional"):
        a.edit("minilm", {0: -1.0}, [("the fire", "burns")])
    with atlas.open(minilm_atlas) as a:  # a bad factor, before the model or torch is loaded
        for eps in (float("nan"), -1.5, True, "0.5"):
            with pytest.raises(BadParameter, match="eps: must be a finite number >= -1") as err:
                a.edit("minilm", [(0, -1.0), (1, eps)], [("the fire", "burns")])
            assert err.value.param == "eps"


def test_a_target_that_is_no_token_is_refused_before_the_model_boots(
    llama: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer alone says so in about a second; the refusal came after a boot of ten."""
    import atlas.models.loading

    def no_boot(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("edit booted a model it could have refused from its tokenizer")

    monkeypatch.setattr(atlas.models.loading, "load_model", no_boot)
    root, direction = llama
    args = ["--direction", direction, "--eps", "-1", "--prompt", "the fire", "--target"]
    err = assert_one_error_line(run_cli("--atlas", root, "edit", "llama", *args, "no such word"))
    assert "target 'no such word' is not one token of this model's vocabulary" in err


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """An atlas of a random:llama-tiny folder (a causal model ``edit`` can boot again), and
    the id of an MLP direction of its last layer."""
    from atlas.models.random_models import save_random_model
    from ingest.job import IngestOptions, ingest
    from tests.support.helpers import quiet

    tmp = tmp_path_factory.mktemp("edit-eps")
    folder = str(save_random_model("llama-tiny", tmp / "llama"))
    root = tmp / "atlas"
    ingest(root, IngestOptions(model=folder, model_id="llama", device="cpu"), log=quiet,
          )  # fmt: skip
    with atlas.open(root) as a:
        (row,) = a.sql(
            "SELECT direction_id FROM directions WHERE kind = 'mlp_out' AND side = 'write' "
            "AND sv_index = 0 ORDER BY layer DESC LIMIT 1"
        ).to_pylist()
    return root, row["direction_id"]


def edit(root: Path, direction: int, eps: str) -> Any:
    return run_cli("--atlas", root, "edit", "llama", "--direction", str(direction), "--eps",
                   eps, "--prompt", "fire and", "--target", "smoke", "--format",
                   "json")  # fmt: skip


def test_an_eps_that_breaks_the_logits_is_refused(llama: tuple[Path, int]) -> None:
    root, direction = llama
    err = assert_one_error_line(edit(root, direction, "1e30"))
    assert "eps 1e+30 breaks the model" in err
    assert "not finite" in err or "uniform" in err
    assert "from -1" in err  # the sensible range
    ok = edit(root, direction, "10")  # a large but sane amplification is measured
    assert ok.returncode == 0, ok.stderr
    (row,) = json.loads(ok.stdout)["results"]
    assert 0 < row["p_after"] < 1 and row["p_after"] != row["p_before"]


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        (torch.tensor([1.0, float("inf"), 0.0]), "not finite"),
        (torch.tensor([float("nan"), 0.0, 0.0]), "not finite"),
        (torch.full((5,), 3.25e7), "uniform"),
        (torch.tensor([0.0, 0.0, 1e-9]), "uniform"),
        (torch.tensor([0.0, 0.1, -2.0]), None),
        (torch.tensor([1e8, 1e8 + 1024.0]), None),
    ],
)
def test_broken_distribution(logits: torch.Tensor, expected: str | None) -> None:
    assert broken_distribution(logits.double()) == expected


def test_measure_refuses_a_model_that_does_not_predict_next_tokens() -> None:
    """``concept_edit`` edits any model, but ``measure`` reads next-token probabilities: for an
    encoder those come from a head that does not predict them, and would look like results."""
    from types import SimpleNamespace

    from query.probe import measure

    encoder = SimpleNamespace(cfg=SimpleNamespace(attention_dir="bidirectional", model_name="enc"))
    with pytest.raises(AtlasError, match="mean nothing for 'enc' \\(attention is bidirectional\\)"):
        measure(encoder, [])


def test_a_random_model_is_booted_for_measuring_without_dropout() -> None:
    """transformers' from_config leaves a model in training mode: an edit of a random model
    measured other probabilities on every run (GPT-2's dropout of 0.1)."""
    from atlas.models.loading import load_model

    bridge = load_model("random:gpt2-tiny").bridge
    assert not any(m.training for m in bridge.modules())
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(bridge(tokens), bridge(tokens))
