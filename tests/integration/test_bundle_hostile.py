"""Hostile and corrupt bundles are refused with one clear line, and the atlas stays unchanged.

Each bundle here is a valid export rewritten with exactly one defect (checksums in its manifest
recomputed unless the defect is the checksum), then loaded with --replace into a copy of an
atlas that already holds the model, so that the defect is the only reason to refuse.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import atlas
from atlas.core.exchange.bundle_format import FORMAT_VERSION
from tests.support.helpers import assert_one_error_line, fingerprint, run_cli
from tests.support.old_formats import version_1_bundle, version_2_bundle

# slow: a sweep of hostile bundles, each loaded and refused
pytestmark = pytest.mark.slow

Members = dict[str, bytes]
DIRECTIONS = "models/0000/directions.parquet"


@pytest.fixture(scope="module")
def valid_bundle(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("valid") / "minilm.bundle"
    result = run_cli("--atlas", minilm_atlas, "export", "-o", path, "--vectors", "none")
    assert result.returncode == 0, result.stderr
    return path


def read_members(bundle: Path) -> tuple[dict, Members]:
    with tarfile.open(bundle) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    return json.loads(files.pop("manifest.json")), files


def write_bundle(
    path: Path,
    manifest: dict,
    members: Members,
    listed: Members | None = None,
    rehash: bool = True,
    extra: Callable[[tarfile.TarFile], None] | None = None,
) -> Path:
    """A tar of ``members``; the manifest's checksums are those of ``listed`` (default: all)."""
    if rehash:
        manifest["members"] = {
            name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in (members if listed is None else listed).items()
        }
    with tarfile.open(path, "w") as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:
            extra(tar)
    return path


def refused(atlas_root: Path, bundle: Path, *words: str) -> None:
    before = fingerprint(atlas_root)
    line = assert_one_error_line(run_cli("--atlas", atlas_root, "load", bundle, "--replace"))
    for word in words:
        assert word in line, line
    assert fingerprint(atlas_root) == before
    assert not any((atlas_root / ".staging").iterdir())


def test_valid_rewrite_loads(valid_bundle: Path, atlas_copy: Path, tmp_path: Path) -> None:
    """The rewriting itself is sound: without a defect the bundle loads."""
    manifest, members = read_members(valid_bundle)
    bundle = write_bundle(tmp_path / "ok.bundle", manifest, members)
    result = run_cli("--atlas", atlas_copy, "load", bundle, "--replace")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["../escaped.parquet", "/tmp/svd-atlas-escaped.parquet"])
def test_member_escaping_destination(
    valid_bundle: Path, atlas_copy: Path, tmp_path: Path, name: str
) -> None:
    manifest, members = read_members(valid_bundle)
    bundle = write_bundle(
        tmp_path / "escape.bundle", manifest, {name: b"PAR1 evil", **members}, listed=members
    )
    refused(atlas_copy, bundle, "escapes the destination")
    assert not Path("/tmp/svd-atlas-escaped.parquet").exists()
    assert not list(tmp_path.parent.rglob("escaped.parquet"))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
def test_link_member(valid_bundle: Path, atlas_copy: Path, tmp_path: Path, kind: bytes) -> None:
    manifest, members = read_members(valid_bundle)
    target = "models/0000/top_neurons.parquet"
    members.pop(target)

    def add_link(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(target)
        info.type, info.linkname = kind, "/etc/passwd"
        tar.addfile(info)

    listed = {**members, target: b""}
    bundle = write_bundle(tmp_path / "link.bundle", manifest, members, listed, extra=add_link)
    refused(atlas_copy, bundle, "link", target)


def test_checksum_mismatch(valid_bundle: Path, atlas_copy: Path, tmp_path: Path) -> None:
    manifest, members = read_members(valid_bundle)
    data = bytearray(members[DIRECTIONS])
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    members[DIRECTIONS] = bytes(data)
    bundle = write_bundle(tmp_path / "altered.bundle", manifest, members, rehash=False)
    refused(atlas_copy, bundle, "checksum mismatch", DIRECTIONS)


@pytest.mark.parametrize("where", ["half", "last member"])
def test_truncated_file(valid_bundle: Path, atlas_copy: Path, tmp_path: Path, where: str) -> None:
    data = valid_bundle.read_bytes()
    with tarfile.open(valid_bundle) as tar:
        last = tar.getmembers()[-1]
    # "last member": cut 10 bytes before the end of the final member's data (the tar's
    # zero padding after it would hide a cut of a fixed fraction of the file)
    cut = len(data) // 2 if where == "half" else last.offset_data + last.size - 10
    bundle = tmp_path / "truncated.bundle"
    bundle.write_bytes(data[:cut])
    refused(atlas_copy, bundle, "truncated")


def test_newer_format_version(valid_bundle: Path, atlas_copy: Path, tmp_path: Path) -> None:
    manifest, members = read_members(valid_bundle)
    manifest["format_version"] = FORMAT_VERSION + 1
    bundle = write_bundle(tmp_path / "future.bundle", manifest, members)
    refused(atlas_copy, bundle, f"format version {FORMAT_VERSION + 1}", "upgrade svd-atlas")


def test_a_manifest_nested_too_deeply(atlas_copy: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "deep.bundle"
    with tarfile.open(bundle, "w") as tar:
        data = ("[" * 100_000 + "]" * 100_000).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    refused(atlas_copy, bundle, "unreadable manifest: its JSON is nested too deeply to read")


def test_member_not_in_manifest(valid_bundle: Path, atlas_copy: Path, tmp_path: Path) -> None:
    manifest, members = read_members(valid_bundle)
    extra = {**members, "models/0000/extra.parquet": b"unexpected"}
    bundle = write_bundle(tmp_path / "extra.bundle", manifest, extra, listed=members)
    refused(atlas_copy, bundle, "not listed")


def test_inconsistent_rows_with_valid_checksums(
    valid_bundle: Path, atlas_copy: Path, tmp_path: Path
) -> None:
    """A well-formed bundle whose direction ids collide with each other is refused too."""
    manifest, members = read_members(valid_bundle)
    directions = pq.read_table(pa.BufferReader(members[DIRECTIONS]))
    ids = pc.if_else(pc.equal(directions["direction_id"], 5), 4, directions["direction_id"])
    directions = directions.set_column(0, "direction_id", ids)
    sink = io.BytesIO()
    pq.write_table(directions, sink)
    members[DIRECTIONS] = sink.getvalue()
    bundle = write_bundle(tmp_path / "dup.bundle", manifest, members)
    refused(atlas_copy, bundle, "inconsistent", "direction_id")


def test_not_a_bundle(atlas_copy: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "notes.bundle"
    bundle.write_text("just some text\n" * 100)
    refused(atlas_copy, bundle, "not an svd-atlas bundle")


@pytest.fixture(scope="module")
def f32_bundle(minilm_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("f32") / "minilm.bundle"
    result = run_cli("--atlas", minilm_atlas, "export", "-o", path)
    assert result.returncode == 0, result.stderr
    return path


def _with_vectors(members: Members, change: Callable[[np.ndarray], np.ndarray]) -> Members:
    table = pq.read_table(io.BytesIO(members[DIRECTIONS]))
    column = table["vector"].combine_chunks()
    width = len(column[0])
    vectors = change(column.flatten().to_numpy().reshape(-1, width).copy())
    new = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    table = table.set_column(table.column_names.index("vector"), "vector", new)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return {**members, DIRECTIONS: sink.getvalue()}


def test_vectors_that_are_not_unit_length_are_refused(
    f32_bundle: Path, atlas_copy: Path, tmp_path: Path
) -> None:
    manifest, members = read_members(f32_bundle)
    bad = _with_vectors(members, lambda v: v * np.where(np.arange(len(v)) == 7, 3.0, 1.0)[:, None])
    refused(atlas_copy, write_bundle(tmp_path / "b.bundle", manifest, bad), "unit length")


def test_vectors_of_the_wrong_width_are_refused(
    f32_bundle: Path, atlas_copy: Path, tmp_path: Path
) -> None:
    manifest, members = read_members(f32_bundle)
    bad = _with_vectors(members, lambda v: v[:, :-1] / np.linalg.norm(v[:, :-1], axis=1)[:, None])
    refused(atlas_copy, write_bundle(tmp_path / "b.bundle", manifest, bad), "d_model")


def test_rows_of_another_model_are_refused(
    f32_bundle: Path, atlas_copy: Path, tmp_path: Path
) -> None:
    manifest, members = read_members(f32_bundle)
    table = pq.read_table(io.BytesIO(members[DIRECTIONS]))
    ids = pa.array(["minilm"] * (table.num_rows - 1) + ["other"])
    table = table.set_column(table.column_names.index("model_id"), "model_id", ids)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    bad = {**members, DIRECTIONS: sink.getvalue()}
    refused(atlas_copy, write_bundle(tmp_path / "b.bundle", manifest, bad), "another model")


def test_a_bundled_index_is_never_trusted(
    f32_bundle: Path, minilm_atlas: Path, tmp_path: Path
) -> None:
    """A version 1 bundle's index member (later bundles hold none), with the right ids but
    other vectors (or an HNSW index), is ignored: the loaded index is rebuilt from the verified
    vectors."""
    import faiss

    honest = version_1_bundle(version_2_bundle(f32_bundle, tmp_path / "v2"), tmp_path / "v1")
    manifest, members = read_members(honest)
    ids = pq.read_table(io.BytesIO(members["models/0000/directions.parquet"]))["direction_id"]
    ids = ids.to_numpy().astype(np.int64)
    vectors = np.random.default_rng(0).standard_normal((len(ids), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for name, inner in (("flat", faiss.IndexFlatIP(384)), ("hnsw", faiss.IndexHNSWFlat(384, 8))):
        lying = faiss.IndexIDMap2(inner)
        lying.add_with_ids(vectors, ids)
        tampered = {**members, "models/0000/residual.faiss": faiss.serialize_index(lying).tobytes()}
        bundle = write_bundle(tmp_path / f"{name}.bundle", manifest, tampered)
        root = tmp_path / name
        result = run_cli("--atlas", root, "load", bundle)
        assert result.returncode == 0, result.stderr
        with atlas.open(root) as loaded, atlas.open(minilm_atlas) as original:
            index = loaded.residual_index("minilm")
            stored = loaded.sql("SELECT direction_id, vector FROM directions ORDER BY direction_id")
            expected = np.array(stored["vector"].to_pylist(), np.float32)
            stored_ids = stored["direction_id"].to_numpy().astype(np.int64)
            np.testing.assert_array_equal(index.reconstruct_batch(stored_ids), expected)
            kinds = ["ov", "mlp_in", "mlp_out"]  # what a version 1 atlas held
            hits = [h.direction_id for h in loaded.search("fire", k=10, kind=kinds)]
            assert hits == [h.direction_id for h in original.search("fire", k=10, kind=kinds)]


def test_a_hostile_bundle_opened_read_only_is_refused_too(f32_bundle: Path, tmp_path: Path) -> None:
    manifest, members = read_members(f32_bundle)
    bad = _with_vectors(members, lambda v: v * 2)
    bundle = write_bundle(tmp_path / "b.bundle", manifest, bad)
    with pytest.raises(atlas.AtlasError, match="unit length") as caught:
        atlas.open(bundle)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle"]
