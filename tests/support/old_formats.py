"""Artefacts of format version 1, made from fresh ones the way earlier svd-atlas versions wrote
them (``tests/integration/test_format_versions.py``).

- An atlas directory: ``catalog.json`` says version 1; each store lacks ``models.weight_dtype``,
  ``token_bags`` and ``coherence_null`` (added to the contract later) and keeps its index as one
  ``residual.faiss`` (flat, or HNSW as the first release built above ``--exact-max``, with
  ``models.index_type = 'hnsw'``); manifests carry no format version.
- A bundle: the manifest says version 1, each model carries ``has_index`` and a bundled
  ``residual.faiss`` of its vectors, and ``models.parquet`` has no ``weight_dtype``.
- A Parquet tree: the marker says version 1 and names neither the tables nor, per model,
  whether it has an unembedding, and the tree has no unembeddings.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atlas.core.store import sha256_file
from atlas.core.vectors import vector_matrix


def version_1_atlas(root: Path, dest: Path, hnsw: bool = False) -> Path:
    """A copy of the atlas at ``root`` at ``dest`` as version 1 wrote it (see the module
    notes); ``hnsw``: with HNSW indexes."""
    shutil.copytree(root, dest)
    catalog = json.loads((dest / "catalog.json").read_text())
    catalog["format_version"] = 1
    (dest / "catalog.json").write_text(json.dumps(catalog, indent=2))
    for entry in catalog["models"].values():
        store = dest / entry["store"]
        con = duckdb.connect(str(store / "model.duckdb"))
        try:
            con.execute("ALTER TABLE models DROP COLUMN weight_dtype")
            con.execute("DROP TABLE token_bags")
            con.execute("DROP TABLE coherence_null")
            if hnsw:
                con.execute("UPDATE models SET index_type = 'hnsw'")
            rows = con.sql(
                "SELECT direction_id, vector FROM directions ORDER BY direction_id"
            ).to_arrow_table()
            con.execute("CHECKPOINT")
        finally:
            con.close()
        for shard in store.glob("residual-*.faiss"):
            shard.unlink()
        if rows["vector"].null_count == 0:  # a model loaded without vectors has no index
            _write_index(store / "residual.faiss", rows, hnsw)
        manifest = json.loads((store / "manifest.json").read_text())
        del manifest["format_version"]
        manifest["counts"].pop("token_bags")
        manifest["counts"].pop("coherence_null")
        manifest["members"] = {
            p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(store.iterdir())
            if p.is_file() and p.name != "manifest.json"
        }
        (store / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


def _write_index(path: Path, rows: pa.Table, hnsw: bool) -> None:
    """One index of every vector: flat, or HNSW."""
    import faiss

    vectors = vector_matrix(rows["vector"])
    inner = (
        faiss.IndexHNSWFlat(vectors.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        if hnsw
        else faiss.IndexFlatIP(vectors.shape[1])
    )
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, rows["direction_id"].to_numpy().astype(np.int64))
    faiss.write_index(index, str(path))


def version_1_bundle(bundle: Path, dest: Path) -> Path:
    """The bundle at ``bundle`` (f32 vectors) as version 1 wrote it, at ``dest``."""
    import faiss

    with tarfile.open(bundle) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    manifest = json.loads(files.pop("manifest.json"))
    manifest["format_version"] = 1
    for model in manifest["models"]:
        folder = f"models/{model['position']:04d}"
        models = pq.read_table(io.BytesIO(files[f"{folder}/models.parquet"]))
        out = io.BytesIO()
        pq.write_table(models.drop_columns(["weight_dtype"]), out)
        files[f"{folder}/models.parquet"] = out.getvalue()
        directions = pq.read_table(io.BytesIO(files[f"{folder}/directions.parquet"]))
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(model["d_model"]))
        index.add_with_ids(
            vector_matrix(directions["vector"]),
            directions["direction_id"].to_numpy().astype(np.int64),
        )
        files[f"{folder}/residual.faiss"] = faiss.serialize_index(index).tobytes()
        model["has_index"] = True
    manifest["members"] = {
        name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in files.items()
    }
    with tarfile.open(dest, "w") as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def version_1_tree(tree: Path, dest: Path) -> Path:
    """A copy of the Parquet tree at ``tree`` as version 1 wrote it (before trees kept the
    unembedding), at ``dest``."""
    shutil.copytree(tree, dest)
    shutil.rmtree(dest / "unembed")
    marker = json.loads((dest / "_svd_atlas.json").read_text())
    marker["format_version"] = 1
    del marker["tables"]
    for info in marker["models"].values():
        del info["unembed"]
    (dest / "_svd_atlas.json").write_text(json.dumps(marker))
    return dest
