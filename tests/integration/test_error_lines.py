"""Failures outside the atlas are one ``Error:`` line that says what to do, never a traceback:
an object store without credentials, a Ray cluster that is not there, a figure format
matplotlib cannot write, a result file that cannot be written (named as given, not by its
temporary name). ``sql --out`` writes the format its extension (or ``--out-format``) names."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.helpers import assert_one_error_line, run_cli
from tests.support.moto_server import free_port, moto_server
from tests.support.tiny_models import ingest_loaded, tiny_gpt2

QUERY = (
    "SELECT layer, kind, count(*) AS n, [1, 2] AS pair FROM directions GROUP BY ALL ORDER BY ALL"
)


@pytest.fixture(scope="module")
def tiny_atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("errors") / "atlas"
    ingest_loaded(root, tiny_gpt2(n_layers=2), "tiny")
    return root


@pytest.fixture(scope="module")
def no_credentials() -> Iterator[dict[str, str | None]]:
    """A moto S3 server on loopback, and an environment that points at it with no credentials
    anywhere (no keys, no files, no instance metadata)."""
    pytest.importorskip("s3fs", reason="needs s3fs (pip install -e '.[test]')")
    pytest.importorskip("moto", reason="needs moto[server] (pip install -e '.[test]')")
    import s3fs

    with moto_server() as endpoint:
        try:
            s3fs.S3FileSystem.clear_instance_cache()  # none made with another test's credentials
            yield {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": None,
                "AWS_SECRET_ACCESS_KEY": None,
                "AWS_SESSION_TOKEN": None,
                "AWS_PROFILE": None,
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                "AWS_CONFIG_FILE": "/nonexistent/config",
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize(
    "args",
    [
        ["open", "s3://bucket/prefix"],
        ["--atlas", "s3://bucket/prefix", "models"],
        ["--atlas", "s3://bucket/prefix", "sql", "SELECT 1"],
        ["--atlas", "{atlas}", "export", "--parquet", "s3://bucket/prefix"],
    ],
)
def test_missing_cloud_credentials_are_one_line(
    no_credentials: dict[str, str | None], tiny_atlas: Path, args: list[str]
) -> None:
    argv = [a.format(atlas=tiny_atlas) for a in args]
    line = assert_one_error_line(run_cli(*argv, env=no_credentials))  # type: ignore[arg-type]
    assert "cannot reach s3://bucket/prefix: no credentials were found" in line
    assert "AWS_ACCESS_KEY_ID" in line


def test_a_ray_cluster_that_is_not_there_is_one_line_at_once(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="needs Ray (pip install 'svd-atlas[ray]')")
    port = free_port()  # nothing listens on it
    started = time.monotonic()
    result = run_cli(
        "--atlas", tmp_path / "atlas", "ingest", "random:llama-tiny", "random:gpt2-small",
        "--ray", f"127.0.0.1:{port}",
    )  # fmt: skip
    line = assert_one_error_line(result)
    assert time.monotonic() - started < 30  # Ray itself retries for minutes
    assert f"cannot connect to the Ray cluster at 127.0.0.1:{port}" in line
    assert "ray start --head" in line


@pytest.mark.slow  # imports matplotlib
def test_an_unsupported_plot_format_lists_matplotlibs(tiny_atlas: Path, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    out = tmp_path / "x.txt"
    line = assert_one_error_line(run_cli("--atlas", tiny_atlas, "spectrum", "tiny", "--plot", out))
    assert ".txt" in line and not out.exists()
    for extension in Figure().canvas.get_supported_filetypes():
        assert f".{extension}" in line
    svg = tmp_path / "x.svg"
    assert run_cli("--atlas", tiny_atlas, "spectrum", "tiny", "--plot", svg).returncode == 0
    assert svg.read_text().lstrip().startswith("<?xml")


@pytest.mark.slow  # imports matplotlib
def test_a_plot_never_lands_in_the_atlas(tiny_atlas: Path, tmp_path: Path) -> None:
    """As ``sql --out``: not inside the atlas, not through a link into it, and a hard link to
    an atlas file is replaced, never written into (that overwrote a store's unembedding)."""
    before = {p: p.read_bytes() for p in tiny_atlas.rglob("*") if p.is_file()}
    (tmp_path / "link.png").symlink_to(tiny_atlas / "catalog.json")
    unembed = next(tiny_atlas.glob("store/*/unembed.npy"))
    (tmp_path / "hard.png").hardlink_to(unembed)
    plot = ["--atlas", tiny_atlas, "spectrum", "tiny", "--plot"]
    for out in (tiny_atlas / "x.png", tmp_path / "link.png"):
        assert "inside the atlas" in assert_one_error_line(run_cli(*plot, out))
    assert run_cli(*plot, tmp_path / "hard.png").returncode == 0
    assert (tmp_path / "hard.png").read_bytes()[:4] == b"\x89PNG"
    assert {p: p.read_bytes() for p in tiny_atlas.rglob("*") if p.is_file()} == before
    # a link elsewhere is written through and stays a link; a missing folder is named
    (tmp_path / "named.png").symlink_to(tmp_path / "real.png")
    assert run_cli(*plot, tmp_path / "named.png").returncode == 0
    assert (tmp_path / "named.png").is_symlink()
    assert (tmp_path / "real.png").read_bytes()[:4] == b"\x89PNG"
    line = assert_one_error_line(run_cli(*plot, tmp_path / "nowhere" / "x.png"))
    assert line.endswith(f"cannot write {tmp_path / 'nowhere' / 'x.png'}: the folder "
                         f"{tmp_path / 'nowhere'} does not exist")  # fmt: skip


def _expected(tiny_atlas: Path) -> list[dict[str, object]]:
    result = run_cli("--atlas", tiny_atlas, "sql", QUERY, "--format", "json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    assert rows
    return rows


def test_sql_out_writes_the_format_its_extension_names(tiny_atlas: Path, tmp_path: Path) -> None:
    rows = _expected(tiny_atlas)
    for name in ("r.parquet", "r.csv", "r.json", "r.jsonl", "r.data"):
        extra = ["--out-format", "csv"] if name == "r.data" else []
        result = run_cli("--atlas", tiny_atlas, "sql", QUERY, "--out", tmp_path / name, *extra)
        assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == rows
    assert json.loads((tmp_path / "r.json").read_text()) == rows
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    for name in ("r.csv", "r.data"):
        with (tmp_path / name).open(newline="") as fh:
            read = list(csv.DictReader(fh))
        assert [{**r, "n": int(r["n"]), "layer": int(r["layer"]), "pair": json.loads(r["pair"])}
                for r in read] == rows  # fmt: skip
    with pytest.raises(Exception, match="Parquet magic|parquet"):
        pq.read_table(tmp_path / "r.csv")


def test_sql_out_refuses_an_unknown_extension_and_names_the_file_not_its_temporary(
    tiny_atlas: Path, tmp_path: Path
) -> None:
    line = assert_one_error_line(run_cli("--atlas", tiny_atlas, "sql", QUERY, "--out",
                                         tmp_path / "r.txt"))  # fmt: skip
    assert "r.txt" in line and "--out-format" in line and not (tmp_path / "r.txt").exists()
    for out in (tmp_path / "missing" / "r.parquet", tmp_path / "r.txt" / "r.csv"):
        line = assert_one_error_line(run_cli("--atlas", tiny_atlas, "sql", QUERY, "--out", out))
        assert f"cannot write {out}" in line and ".tmp" not in line
    (tmp_path / "plain").write_text("x")
    line = assert_one_error_line(
        run_cli("--atlas", tiny_atlas, "sql", QUERY, "--out", tmp_path / "plain" / "r.parquet")
    )
    assert ".tmp" not in line and not list(tmp_path.glob("**/.*.tmp"))
