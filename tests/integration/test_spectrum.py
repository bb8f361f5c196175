"""`svd-atlas spectrum`: statistics per layer, the norm-jump rule, and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import atlas
from query.spectrum import jump_flags, load_spectra, neighbour_ratios
from tests.support.helpers import assert_one_error_line, run_cli
from tests.support.tiny_models import ingest_loaded, tiny_gpt2

PLANTED_LAYER = 3


def flagged(values: list[float], factor: float = 10.0) -> dict[int, str]:
    ratios = neighbour_ratios(np.array(values))
    return {i: f for i, r in enumerate(ratios) if (f := jump_flags(float(r), factor))}


def test_rule_on_explicit_sequences() -> None:
    smooth = [1.3**i for i in range(12)]  # steady growth, the ratio to a median stays < 3
    assert flagged(smooth) == {}
    middle = [1.0] * 8
    middle[4] = 100.0
    assert flagged(middle) == {4: "up"}  # its neighbours are not dragged along
    assert flagged([100.0, 1, 1, 1, 1, 1]) == {0: "up"}
    assert flagged([1, 1, 1, 1, 1, 0.01]) == {5: "down"}
    assert flagged([1, 100, 1, 1, 1, 1]) == {1: "up"}  # layer 0's reference ignores it
    assert flagged([1.0, 1, 1, 12, 1], factor=10) == {3: "up"}
    assert flagged([1.0, 1, 1, 8, 1], factor=10) == {}
    assert flagged([1.0, 1, 1, 8, 1], factor=3) == {3: "up"}
    # Reference = median of the 4 nearest other layers: for index 1 of 6 that is 0, 2, 3, 4.
    values = [2.0, 5, 4, 8, 16, 32]
    assert neighbour_ratios(np.array(values))[1] == pytest.approx(5 / np.median([2, 4, 8, 16]))


@pytest.fixture(scope="module")
def jump_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One random model ingested as is ('clean') and with one layer scaled 100x ('planted')."""
    root = tmp_path_factory.mktemp("spectrum") / "atlas"
    loaded = tiny_gpt2(n_layers=6, seed=3)
    ingest_loaded(root, loaded, "clean")
    block = loaded.bridge.blocks[PLANTED_LAYER]
    with torch.no_grad():  # through the live parameters' views
        block.attn.W_O.mul_(100)
        block.mlp.W_in.mul_(100)
        block.mlp.W_out.mul_(100)
    ingest_loaded(root, loaded, "planted")
    return root


def test_planted_jump_is_flagged_and_nothing_else(jump_atlas: Path) -> None:
    with atlas.open(jump_atlas) as a:
        clean = load_spectra(a.reader, "clean")
        planted = load_spectra(a.reader, "planted")
    assert clean.anomalies == []
    assert max(max(r.sigma_ratio, 1 / r.sigma_ratio) for r in clean.layers) < 1.5
    got = {(r.kind, r.layer) for r in planted.anomalies}
    assert got == {(k, PLANTED_LAYER) for k in ("ov", "mlp_in", "mlp_out")}
    for r in planted.anomalies:
        assert r.flags[0].startswith("sigma_max up") and len(r.flags) == 2
        assert 50 < r.sigma_ratio < 200 and 50 < r.frobenius_ratio < 200


def test_cli_json_layer_norms_match_the_matrices_table(jump_atlas: Path, tmp_path: Path) -> None:
    png = tmp_path / "planted.png"
    result = run_cli(
        "--atlas", jump_atlas, "spectrum", "planted", "--kind", "ov", "--plot", png,
        "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    with atlas.open(jump_atlas) as a:
        expected = a.sql(
            "SELECT layer, max(sigma_max) AS s, max(frobenius_norm) AS f FROM matrices "
            "WHERE model_id = 'planted' AND kind = 'ov' GROUP BY layer ORDER BY layer"
        ).to_pylist()
    assert [r["layer"] for r in out["layers"]] == [e["layer"] for e in expected]
    for row, e in zip(out["layers"], expected, strict=True):
        assert row["kind"] == "ov"
        assert row["sigma_max"] == pytest.approx(e["s"])
        assert row["frobenius_norm"] == pytest.approx(e["f"])
    assert [(r["layer"], r["flag"][:12]) for r in out["anomalies"]] == [
        (PLANTED_LAYER, "sigma_max up")
    ]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_table_per_head_on_minilm(minilm_atlas: Path) -> None:
    result = run_cli("--atlas", minilm_atlas, "spectrum", "minilm", "--kind", "ov", "--heads")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["model_id", "layer", "head", "kind"]  # the id first
    assert len([line for line in lines if line.split()[3:4] == ["ov"]]) == 6 * 12
    assert "no layer's norm differs from its neighbours' by more than 10x" in result.stdout


def test_cli_bad_input(minilm_atlas: Path) -> None:
    err = assert_one_error_line(run_cli("--atlas", minilm_atlas, "spectrum", "nope"))
    assert "no model 'nope'" in err
    err = assert_one_error_line(
        run_cli("--atlas", minilm_atlas, "spectrum", "minilm", "--kind", "mlp_gate")
    )
    assert "has no mlp_gate matrices" in err
    err = assert_one_error_line(
        run_cli("--atlas", minilm_atlas, "spectrum", "minilm", "--jump-factor", "1")
    )
    assert "--jump-factor: Input should be greater than 1" in err
