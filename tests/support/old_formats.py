"""Artefacts of older format versions, made from fresh ones the way earlier svd-atlas versions
wrote them (``tests/integration/test_format_versions.py``): version 3 (atlas directories only)
and 2 from a fresh artefact, version 1 from a version 2 one.

Version 3 of an atlas directory is a fresh one whose stores have no hit rows
(``atlas.core.hit_rows``), and whose catalog and manifests say version 3. Bundles and Parquet
trees never held hit rows: their version 3 is the current one.

Version 2 (before circuits) is a fresh artefact without what versions 3 and 4 added
(``atlas.core.contents``): no ``qk`` matrices or directions (their ids were the last of each
model, so a model's ids stay one contiguous range, shorter), no ``composition`` or
``composition_pairs`` tables, no ``models.positional_embedding``, ``models.format_version``,
``matrices.eigen_positivity`` or ``top_tokens.basis`` (and no rows of the ``embed`` basis),
and version 2 markers.

Version 1, on top of that:

- an atlas directory: ``catalog.json`` says version 1; each store lacks ``models.weight_dtype``,
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas.core.store import sha256_file, write_index_from_database
from atlas.core.vectors import vector_matrix

ADDED_TABLES = ("composition", "composition_pairs")
ADDED_COLUMNS = {
    "models": ("positional_embedding", "format_version"),
    "matrices": ("eigen_positivity",),
    "top_tokens": ("basis",),
}
PER_DIRECTION = ("top_tokens", "top_neurons", "token_bags")


# -- atlas directories ------------------------------------------------------------------------

HIT_FILES = ("hit-rows.npy", "hit-tokens.json")


def version_3_atlas(root: Path, dest: Path) -> Path:
    """A copy of the fresh atlas at ``root`` at ``dest`` as version 3 wrote it."""
    shutil.copytree(root, dest)
    catalog = json.loads((dest / "catalog.json").read_text())
    catalog["format_version"] = 3
    for entry in catalog["models"].values():
        store = dest / entry["store"]
        for name in HIT_FILES:
            (store / name).unlink()
        manifest = json.loads((store / "manifest.json").read_text())
        manifest["format_version"] = 3
        _write_manifest(store, manifest)
    (dest / "catalog.json").write_text(json.dumps(catalog, indent=2))
    return dest


def version_2_atlas(root: Path, dest: Path) -> Path:
    """A copy of the fresh atlas at ``root`` at ``dest`` as version 2 wrote it."""
    shutil.copytree(root, dest)
    catalog = json.loads((dest / "catalog.json").read_text())
    catalog["format_version"] = 2
    for entry in catalog["models"].values():
        store = dest / entry["store"]
        con = duckdb.connect(str(store / "model.duckdb"))
        try:
            qk = "SELECT direction_id FROM directions WHERE kind = 'qk'"
            for table in PER_DIRECTION:
                con.execute(f"DELETE FROM {table} WHERE direction_id IN ({qk})")
            con.execute("DELETE FROM top_tokens WHERE basis <> 'unembed'")
            con.execute("DELETE FROM directions WHERE kind = 'qk'")
            con.execute("DELETE FROM matrices WHERE kind = 'qk'")
            for table in ADDED_TABLES:
                con.execute(f"DROP TABLE {table}")
            for table, columns in ADDED_COLUMNS.items():
                for column in columns:
                    con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
            ((n_directions,),) = con.sql("SELECT count(*) FROM directions").fetchall()
            ((n_matrices,),) = con.sql("SELECT count(*) FROM matrices").fetchall()
            con.execute("UPDATE models SET n_directions = ?, n_matrices = ?",
                        [n_directions, n_matrices])  # fmt: skip
            counts = {
                t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                for t in ("matrices", "directions", "top_tokens", "top_neurons", "vocab",
                          "token_bags", "coherence_null")
            }  # fmt: skip
            con.execute("CHECKPOINT")
        finally:
            con.close()
        entry["n_directions"], entry["n_matrices"] = n_directions, n_matrices
        for shard in [*store.glob("residual-*.faiss"), *(store / n for n in HIT_FILES)]:
            shard.unlink()
        write_index_from_database(store / "model.duckdb", store)
        manifest = json.loads((store / "manifest.json").read_text())
        manifest["format_version"] = 2
        manifest["ids"]["n_directions"], manifest["ids"]["n_matrices"] = n_directions, n_matrices
        manifest["counts"] = counts
        _write_manifest(store, manifest)
    (dest / "catalog.json").write_text(json.dumps(catalog, indent=2))
    return dest


def version_1_atlas(root: Path, dest: Path, hnsw: bool = False) -> Path:
    """A copy of the version 2 atlas at ``root`` at ``dest`` as version 1 wrote it (see the
    module notes); ``hnsw``: with HNSW indexes."""
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
        _write_manifest(store, manifest)
    return dest


def _write_manifest(store: Path, manifest: dict[str, object]) -> None:
    manifest["members"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(store.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }
    (store / "manifest.json").write_text(json.dumps(manifest, indent=2))


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


# -- tables, as version 2 had them ---------------------------------------------------------------


def version_2_tables(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """A model's tables (by name) as version 2 had them: no qk rows, no embed readout, no
    composition tables, none of the columns version 3 added; the models row counts what is
    left."""
    directions = tables["directions"]
    qk = directions.filter(pc.equal(directions["kind"], "qk"))["direction_id"]
    out = {}
    for name, table in tables.items():
        if name in ADDED_TABLES:
            continue
        if name in ("matrices", "directions"):
            table = table.filter(pc.not_equal(table["kind"], "qk"))
        if name in PER_DIRECTION:
            table = table.filter(pc.invert(pc.is_in(table["direction_id"], qk)))
        if name == "top_tokens":
            table = table.filter(pc.equal(table["basis"], "unembed"))
        out[name] = table.drop_columns(
            [c for c in ADDED_COLUMNS.get(name, ()) if c in table.column_names]
        )
    if "models" in out:
        models = out["models"]
        for column, n in (("n_directions", out["directions"].num_rows),
                          ("n_matrices", out["matrices"].num_rows)):  # fmt: skip
            i = models.column_names.index(column)
            models = models.set_column(i, column, pa.array([n] * models.num_rows, pa.int32()))
        out["models"] = models
    return out


# -- bundles --------------------------------------------------------------------------------------


def _read_bundle(bundle: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    with tarfile.open(bundle) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    return json.loads(files.pop("manifest.json")), files


def _write_bundle(dest: Path, manifest: dict[str, object], files: dict[str, bytes]) -> Path:
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


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def version_2_bundle(bundle: Path, dest: Path) -> Path:
    """The fresh bundle at ``bundle`` as version 2 wrote it, at ``dest``."""
    manifest, files = _read_bundle(bundle)
    manifest["format_version"] = 2
    for model in manifest["models"]:  # type: ignore[attr-defined]
        folder = f"models/{model['position']:04d}"
        names = [n for n in files if n.startswith(f"{folder}/") and n.endswith(".parquet")]
        tables = {n.split("/")[-1].removesuffix(".parquet"): n for n in names}
        read = {t: pq.read_table(io.BytesIO(files[n])) for t, n in tables.items()}
        for name in names:
            del files[name]
        for table, rows in version_2_tables(read).items():
            files[f"{folder}/{table}.parquet"] = _parquet(rows)
        model["counts"] = {
            t: pq.read_metadata(io.BytesIO(files[f"{folder}/{t}.parquet"])).num_rows
            for t in model["counts"]
            if t not in ADDED_TABLES
        }
        model["n_directions"] = model["counts"]["directions"]
        model["n_matrices"] = model["counts"]["matrices"]
    return _write_bundle(dest, manifest, files)


def version_1_bundle(bundle: Path, dest: Path) -> Path:
    """The version 2 bundle at ``bundle`` (f32 vectors) as version 1 wrote it, at ``dest``."""
    import faiss

    manifest, files = _read_bundle(bundle)
    manifest["format_version"] = 1
    for model in manifest["models"]:  # type: ignore[attr-defined]
        folder = f"models/{model['position']:04d}"
        models = pq.read_table(io.BytesIO(files[f"{folder}/models.parquet"]))
        files[f"{folder}/models.parquet"] = _parquet(models.drop_columns(["weight_dtype"]))
        directions = pq.read_table(io.BytesIO(files[f"{folder}/directions.parquet"]))
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(model["d_model"]))
        index.add_with_ids(
            vector_matrix(directions["vector"]),
            directions["direction_id"].to_numpy().astype(np.int64),
        )
        files[f"{folder}/residual.faiss"] = faiss.serialize_index(index).tobytes()
        model["has_index"] = True
    return _write_bundle(dest, manifest, files)


# -- Parquet trees ---------------------------------------------------------------------------------


def version_2_tree(tree: Path, dest: Path) -> Path:
    """A copy of the fresh Parquet tree at ``tree`` as version 2 wrote it, at ``dest``."""
    shutil.copytree(tree, dest)
    marker = json.loads((dest / "_svd_atlas.json").read_text())
    for table in ADDED_TABLES:
        shutil.rmtree(dest / table)
    for model_id, info in marker["models"].items():
        files = {
            t: dest / t / f"model_id={_escaped(model_id)}" / "data_0.parquet"
            for t in marker["tables"]
            if t not in ADDED_TABLES
        }
        tables = version_2_tables({t: pq.read_table(p) for t, p in files.items()})
        for table, rows in tables.items():
            pq.write_table(rows, files[table])
        info["n_directions"] = tables["directions"].num_rows
        del info["format_version"]
    marker["format_version"] = 2
    marker["tables"] = [t for t in marker["tables"] if t not in ADDED_TABLES]
    (dest / "_svd_atlas.json").write_text(json.dumps(marker))
    return dest


def _escaped(model_id: str) -> str:
    import urllib.parse

    return urllib.parse.quote(model_id, safe="")


def version_1_tree(tree: Path, dest: Path) -> Path:
    """A copy of the version 2 Parquet tree at ``tree`` as version 1 wrote it (before trees
    kept the unembedding), at ``dest``."""
    shutil.copytree(tree, dest)
    shutil.rmtree(dest / "unembed")
    marker = json.loads((dest / "_svd_atlas.json").read_text())
    marker["format_version"] = 1
    del marker["tables"]
    for info in marker["models"].values():
        del info["unembed"]
    (dest / "_svd_atlas.json").write_text(json.dumps(marker))
    return dest
