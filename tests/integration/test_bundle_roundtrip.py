"""Bundles end to end: export, load into an empty atlas, open read-only, vector modes, refusal."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

import atlas
from tests.support.atlas_compare import (
    assert_tables_equal,
    brute_force,
    neighbours,
    query_set,
    recall_at_k,
    table,
    vectors,
)
from tests.support.helpers import assert_one_error_line, fingerprint, run_cli

VECTORS = ("f32", "f16", "none")


class Bundles(dict[str, Path]):
    """The MiniLM atlas exported through the real CLI with each ``--vectors`` mode, each on
    first use (the fast tier needs only f32)."""

    def __init__(self, root: Path, out: Path):
        super().__init__()
        self.root, self.out = root, out

    def __missing__(self, vectors: str) -> Path:
        path = self[vectors] = self.out / f"minilm-{vectors}.bundle"
        result = run_cli("--atlas", self.root, "export", "minilm", "-o", path, "--vectors", vectors)
        assert result.returncode == 0, result.stderr
        assert f"exported minilm to {path}" in result.stdout
        return path


@pytest.fixture(scope="module")
def bundles(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return Bundles(minilm_atlas, tmp_path_factory.mktemp("bundles"))


def test_round_trip_into_empty_atlas(
    minilm_atlas: Path, bundles: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "atlas"
    result = run_cli("--atlas", root, "load", bundles["f32"])
    assert result.returncode == 0, result.stderr
    assert "direction ids 0..13823" in result.stdout and "remapped" not in result.stdout

    before = json.loads((minilm_atlas / "catalog.json").read_text())
    after = json.loads((root / "catalog.json").read_text())
    for key in ("first_direction_id", "n_directions", "first_matrix_id", "n_matrices"):
        assert after["models"]["minilm"][key] == before["models"]["minilm"][key]
    assert after["next_direction_id"] == before["next_direction_id"]

    with atlas.open(minilm_atlas) as original, atlas.open(root) as loaded:
        assert_tables_equal(original, loaded)  # every table, every id and value
        queries = query_set(original, "minilm")
        expected = neighbours(original, "minilm", queries)
        np.testing.assert_array_equal(neighbours(loaded, "minilm", queries), expected)
        assert recall_at_k(expected, brute_force(original, "minilm", queries)) == 1.0
        for kwargs in (
            {"text": "fire"},
            {"text": "ocean, sea", "kind": ("ov",)},
            {"direction": 432},
            {"text": "fire", "space": "token"},
        ):
            assert [h.to_dict() for h in loaded.search(**kwargs)] == [
                h.to_dict() for h in original.search(**kwargs)
            ]


def test_bundle_manifest_describes_models_and_members(bundles: dict[str, Path]) -> None:
    with tarfile.open(bundles["f32"]) as tar:
        names = tar.getnames()
        fh = tar.extractfile("manifest.json")
        assert fh is not None
        manifest = json.loads(fh.read())
    assert names[0] == "manifest.json"
    assert manifest["format"] == "svd-atlas-bundle" and manifest["format_version"] == 3
    assert manifest["vectors"] == "f32" and "duckdb" in manifest["library_versions"]
    (model,) = manifest["models"]
    assert model["model_id"] == "minilm" and model["d_model"] == 384 and "has_index" not in model
    assert model["counts"]["directions"] == 13824 and "torch" in model["ingest_versions"]
    assert sorted(manifest["members"]) == sorted(names[1:])
    assert all(len(m["sha256"]) == 64 for m in manifest["members"].values())


@pytest.mark.slow  # the fast tier's storage round trip is test_round_trip_into_empty_atlas
def test_open_bundle_read_only(
    minilm_atlas: Path, bundles: dict[str, Path], tmp_path: Path
) -> None:
    bundle = tmp_path / "copy.bundle"
    shutil.copyfile(bundles["f32"], bundle)
    before = bundle.read_bytes()
    with atlas.open(bundle) as opened, atlas.open(minilm_atlas) as original:
        assert opened.location == str(bundle) and opened.model_ids() == ["minilm"]
        assert_tables_equal(original, opened)
        queries = query_set(original, "minilm", n=50)
        np.testing.assert_array_equal(
            neighbours(opened, "minilm", queries), neighbours(original, "minilm", queries)
        )
        private = opened.reader.dir.root
        assert private.is_dir() and not private.is_relative_to(tmp_path)
    assert not private.exists()  # the private copy is gone on close
    assert bundle.read_bytes() == before and sorted(tmp_path.iterdir()) == [bundle]

    listing = run_cli("--atlas", bundle, "models")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[1].startswith("minilm ")
    hits = [
        run_cli("--atlas", where, "search", "fire", "--format", "json").stdout
        for where in (bundle, minilm_atlas)
    ]
    assert json.loads(hits[0]) == json.loads(hits[1]) and len(json.loads(hits[0])) == 10


@pytest.mark.slow
def test_f16_and_no_vectors(minilm_atlas: Path, bundles: dict[str, Path]) -> None:
    sizes = {k: bundles[k].stat().st_size for k in VECTORS}
    assert sizes["none"] < sizes["f16"] < sizes["f32"]
    with atlas.open(minilm_atlas) as original:
        n_vectors, width = vectors(original, "minilm")[1].shape
    halved = n_vectors * width * 2  # f16 saves half of each f32 vector's 4 bytes a value
    assert 0.7 * halved < sizes["f32"] - sizes["f16"] < 1.05 * halved  # after compression

    with (
        atlas.open(minilm_atlas) as original,
        atlas.open(bundles["f16"]) as half,
        atlas.open(bundles["none"]) as bare,
    ):
        assert_tables_equal(original, half, exclude=("vector",))
        ids, exact = vectors(original, "minilm")
        half_ids, widened = vectors(half, "minilm")
        np.testing.assert_array_equal(ids, half_ids)
        np.testing.assert_allclose(np.linalg.norm(widened, axis=1), 1.0, atol=1e-6)
        # half precision keeps 11 significant bits (relative error <= 2^-11 = 4.9e-4 per value;
        # measured: 2.0e-4 absolute); bfloat16's 8 bits would give about 2e-3 and 5e-3
        error = np.abs(widened - exact)
        assert error.max() < 4e-4
        visible = np.abs(exact) > 1e-3
        assert (error[visible] / np.abs(exact[visible])).max() < 1.5e-3
        queries = query_set(original, "minilm")
        recall = recall_at_k(
            neighbours(half, "minilm", queries), neighbours(original, "minilm", queries)
        )
        assert recall >= 0.999, recall  # measured 1.0 on these queries

        assert_tables_equal(original, bare, exclude=("vector",))
        assert table(bare, "directions")["vector"].null_count == n_vectors
        with pytest.raises(atlas.AtlasError, match="has no vectors"):
            bare.residual_index("minilm")


@pytest.mark.slow  # the fast tier's storage round trip is test_round_trip_into_empty_atlas
def test_load_refuses_existing_model_unless_replace(
    minilm_atlas: Path, bundles: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "atlas"
    shutil.copytree(minilm_atlas, root)
    before = fingerprint(root)
    refused = run_cli("--atlas", root, "load", bundles["f16"])
    assert "--replace" in assert_one_error_line(refused)
    assert fingerprint(root) == before

    replaced = run_cli("--atlas", root, "load", bundles["f16"], "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "replaced 'minilm'" in replaced.stdout and "remapped from 0" in replaced.stdout
    with atlas.open(root) as a, atlas.open(minilm_atlas) as original:
        # like a re-ingest, the replacement takes fresh ids, never the replaced model's
        assert a.sql("SELECT min(direction_id) AS d FROM directions").to_pylist() == [{"d": 13824}]
        shifted = a.sql(
            "SELECT count(*) AS n FROM top_tokens t JOIN directions d USING (direction_id)"
        ).to_pylist()
        assert shifted == [
            {"n": original.sql("SELECT count(*) AS n FROM top_tokens")["n"][0].as_py()}
        ]
