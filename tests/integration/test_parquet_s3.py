"""Parquet trees on object storage: a real S3-compatible server (moto's, started on loopback by
the test), written by ``svd-atlas export --parquet s3://...`` model by model, read back exactly
by ``svd-atlas --atlas s3://...`` and ``svd-atlas open``, and queried by plain DuckDB and plain
pyarrow without svd-atlas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import atlas
from tests.support.atlas_compare import assert_tables_equal
from tests.support.helpers import assert_one_error_line, run_cli
from tests.support.moto_server import moto_server

boto3 = pytest.importorskip("boto3", reason="needs boto3, moto and s3fs (pip install -e '.[test]')")
pytest.importorskip("s3fs", reason="needs s3fs (pip install -e '.[test]')")
pytest.importorskip("moto", reason="needs moto[server] (pip install -e '.[test]')")

pytestmark = pytest.mark.slow  # a moto S3 server process

BUCKET = "atlases"
# What a researcher runs with plain DuckDB and pyarrow (no svd-atlas), as in the README.
PLAIN_READER = r"""
import json, os, sys
import duckdb, fsspec, pyarrow.dataset as ds, pyarrow.fs as pafs

root = sys.argv[1]  # s3://bucket/prefix
con = duckdb.connect()
con.register_filesystem(fsspec.filesystem("s3"))  # DuckDB reads s3:// through fsspec
def scan(table):
    return f"read_parquet('{root}/{table}/*/*.parquet', hive_partitioning = true)"
out = {"duckdb": con.sql(
    f"SELECT model_id, kind, count(*) AS n, round(max(sigma), 4) AS top FROM {scan('directions')} "
    "GROUP BY ALL ORDER BY ALL").fetchall()}
s3 = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"])
d = ds.dataset(root.removeprefix("s3://") + "/top_tokens", filesystem=s3, format="parquet",
               partitioning="hive")
t = d.to_table(filter=(ds.field("polarity") == "pos") & (ds.field("rank") == 0))
out["pyarrow"] = sorted(t.group_by("model_id").aggregate([("token", "count")]).to_pylist(),
                        key=lambda r: r["model_id"])
out["svd_atlas_imported"] = sorted(
    m for m in sys.modules if m.split(".")[0] in ("atlas", "ingest", "query"))
print(json.dumps(out))
"""
SQL = (
    "SELECT model_id, kind, count(*) AS n, round(max(sigma), 4) AS top FROM directions "
    "GROUP BY ALL ORDER BY ALL"
)


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback with one bucket; the environment that points clients at it."""
    with moto_server() as endpoint:
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two planted models of ``small_atlas`` (a word-piece and a ``Ġword`` vocabulary), in
    an atlas of their own: seconds to export, where MiniLM's rows took ten."""
    from ingest.job import IngestOptions, ingest
    from tests.support.helpers import quiet
    from tests.support.planted import planted_models

    root = tmp_path_factory.mktemp("planted") / "atlas"
    for name, loaded in planted_models().items():
        ingest(root, IngestOptions(model=name, device="cpu"), loaded=loaded, log=quiet)
    return root


def _objects(prefix: str) -> dict[str, str]:
    """Every object under ``prefix`` with its ETag (changes when an object is rewritten)."""
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def test_a_tree_on_s3_grows_model_by_model_and_reads_back_exactly(
    s3: dict[str, str], planted: Path
) -> None:
    url = f"s3://{BUCKET}/zoo"
    first = run_cli("--atlas", planted, "export", "bert-like", "--parquet", url, env=s3)
    assert first.returncode == 0, first.stderr
    bert_objects = {k: v for k, v in _objects("zoo/").items() if "model_id=bert-like" in k}
    assert bert_objects and not any(".partial" in k for k in _objects("zoo/"))
    second = run_cli("--atlas", planted, "export", "gpt2-like", "--parquet", url, env=s3)
    assert second.returncode == 0, second.stderr
    after = _objects("zoo/")
    # adding a model rewrote none of the other model's partitions
    assert {k: v for k, v in after.items() if "model_id=bert-like" in k} == bert_objects
    assert any("model_id=gpt2-like" in k for k in after)

    with atlas.open(url) as tree, atlas.open(planted) as original:
        assert tree.model_ids() == ["bert-like", "gpt2-like"]
        assert_tables_equal(original, tree)  # every row of every table, as stored

    opened = run_cli("open", url, "--format", "json", env=s3)
    assert opened.returncode == 0, opened.stderr
    assert [m["model_id"] for m in json.loads(opened.stdout)] == ["bert-like", "gpt2-like"]


def test_plain_duckdb_and_pyarrow_answer_as_the_atlas_does(
    s3: dict[str, str], planted: Path
) -> None:
    url = f"s3://{BUCKET}/plain"
    assert run_cli("--atlas", planted, "export", "--parquet", url, env=s3).returncode == 0
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_READER, url], capture_output=True, text=True,
        env={**os.environ, **s3}, cwd="/",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plain = json.loads(result.stdout)
    assert plain["svd_atlas_imported"] == []
    with atlas.open(url) as tree:
        assert [list(r.values()) for r in tree.sql(SQL).to_pylist()] == plain["duckdb"]
        firsts = tree.sql(
            "SELECT model_id, count(*) AS token_count FROM top_tokens JOIN directions "
            "USING (direction_id) WHERE polarity = 'pos' AND rank = 0 GROUP BY ALL ORDER BY 1"
        ).to_pylist()
    assert firsts == plain["pyarrow"]


def test_a_bad_url_is_one_line(s3: dict[str, str]) -> None:
    line = assert_one_error_line(
        run_cli("--atlas", f"s3://{BUCKET}/nothing-here", "models", env=s3)
    )
    assert "not an svd-atlas Parquet tree" in line
