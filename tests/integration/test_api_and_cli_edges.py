"""The Python API and the CLI at their edges: misuse is one AtlasError (one error line), a handle
serves many threads, output is strict, and the caller's environment is left alone."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import atlas
from atlas.core.errors import AtlasError
from tests.support.helpers import CLI, assert_one_error_line, cli_env, run_cli


@pytest.fixture(scope="module")
def handle(minilm_atlas: Path) -> Iterator[atlas.Atlas]:
    with atlas.open(minilm_atlas) as a:
        yield a


MISUSE: list[tuple[str, Callable[[atlas.Atlas], Any]]] = [
    ("layer: bad layer range 'abc'", lambda a: a.search("fire", layer="abc")),
    ("LAYER must be a number", lambda a: a.card("minilm", "x", 3)),
    ("direction id is an integer", lambda a: a.trace("432")),
    ("text: Input should be a valid string", lambda a: a.search(123)),
    ("kind: unknown kind 'attention'", lambda a: a.search("fire", kind=["ov", "attention"])),
    ("layer: empty or negative layer range", lambda a: a.search("fire", layer=(5, 2))),
    (r"head: give head numbers \(0 or more\)", lambda a: a.search("fire", head=-1)),
    ("min_sigma: Input should be a finite number", lambda a: a.search("fire", min_sigma=math.nan)),
    ("k: Input should be greater than or equal to 1", lambda a: a.search("fire", k=0)),
    ("k: Input should be a valid integer", lambda a: a.search("fire", k=2.5)),
    ("no model 'nope'", lambda a: a.search("fire", model="nope")),
    ("model: give names separated by commas", lambda a: a.search("fire", model=3)),
    ("layers: no such parameter", lambda a: a.search("fire", layers=3)),
    ("no direction", lambda a: a.card(10**9)),
    ("direction id is an integer", lambda a: a.card(True)),
    ("HEAD must be a head number", lambda a: a.card("minilm", 3, "mlp_xx")),
    ("card takes", lambda a: a.card("minilm", 3)),
    ("min_cos: Input should be less than or equal to 1", lambda a: a.trace(432, min_cos=2)),
    ("hops: Input should be greater than or equal to 1", lambda a: a.trace(432, hops=0)),
    ("query: Input should be a valid string", lambda a: a.sql(5)),
    ("exactly one of `text`, `direction` or `vector`", lambda a: a.search()),
    ("must hold real numbers", lambda a: a.search(vector=np.array(["a"] * 384))),
]


@pytest.mark.parametrize(("message", "call"), MISUSE, ids=[m for m, _ in MISUSE])
def test_misuse_is_one_clear_atlas_error(
    handle: atlas.Atlas, message: str, call: Callable[[atlas.Atlas], Any]
) -> None:
    with pytest.raises(AtlasError, match=message) as caught:
        call(handle)
    assert "\n" not in str(caught.value)


def test_a_closed_handle_says_so(minilm_atlas: Path) -> None:
    a = atlas.open(minilm_atlas)
    a.close()
    for call in (lambda: a.sql("SELECT 1"), lambda: a.search("fire"), lambda: a.card(432)):
        with pytest.raises(AtlasError, match="closed"):
            call()
    a.close()  # closing twice is harmless


def test_one_handle_serves_eight_threads(handle: atlas.Atlas) -> None:
    expected_hits = [h.direction_id for h in handle.search("fire", k=5)]
    per_layer = {
        r["layer"]: r["n"]
        for r in handle.sql("SELECT layer, count(*) AS n FROM directions GROUP BY 1").to_pylist()
    }

    def call(i: int) -> bool:
        if i % 3 == 0:
            return [h.direction_id for h in handle.search("fire", k=5)] == expected_hits
        if i % 3 == 1:
            rows = handle.sql("SELECT count(*) AS n FROM directions WHERE layer = ?", [i % 6])
            return rows["n"][0].as_py() == per_layer[i % 6]
        return handle.card(432 + i)["direction_id"] == 432 + i

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(180)))
    assert results == [True] * 180


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "fire", "--layer", "5:2"], "--layer: empty or negative layer range"),
        (["search", "fire", "--head", "-1"], "--head: give head numbers (0 or more)"),
        (["search", "fire", "--head", "1,,2"], "--head: give head numbers separated by commas"),
        (["search", "fire", "--min-sigma", "nan"], "--min-sigma: Input should be a finite number"),
        # a NaN is refused as one, not as a number past a bound ("less than or equal to 1")
        (["search", "fire", "--min-score", "nan"], "--min-score: Input should be a finite number"),
        (["ingest", "minilm", "--name", ""], "model id '' is not allowed: it is empty"),
        (["ingest", "minilm", "--name", "a\x1b[31mb"], "holds a control character"),
        (["trace", "432", "--model", "nope"], "no model 'nope'"),
    ],
)
def test_bad_values_are_one_error_line(minilm_atlas: Path, args: list[str], message: str) -> None:
    line = assert_one_error_line(run_cli("--atlas", minilm_atlas, *args))
    assert message in line and "\x1b" not in line


def test_json_output_is_strict(minilm_atlas: Path) -> None:
    result = run_cli(
        "--atlas", minilm_atlas, "sql",
        "SELECT 'nan'::DOUBLE AS n, 'inf'::DOUBLE AS i, INTERVAL '1 month 2 days 3 hours' AS t, "
        "INTERVAL '90 seconds' AS s, DATE '2026-01-02' AS d",
        "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert row == {"n": None, "i": None, "t": "P1M2DT3H", "s": "PT1M30S", "d": "2026-01-02"}


def test_terminal_escapes_are_shown_not_obeyed(minilm_atlas: Path, tmp_path: Path) -> None:
    for fmt in ("table", "csv", "json"):
        result = run_cli(
            "--atlas", minilm_atlas, "sql", "SELECT 'a' || chr(27) || '[31mred' || chr(7) AS x",
            "--format", fmt,
        )  # fmt: skip
        assert (
            result.returncode == 0 and "\x1b" not in result.stdout and "\x07" not in result.stdout
        )
        shown = "\\u001b[31mred\\u0007" if fmt == "json" else "\\x1b[31mred\\x07"
        assert shown in result.stdout, fmt
    odd = tmp_path / "at\x1b]0;PWN\x07las\nx"
    shutil.copytree(minilm_atlas, odd)
    check = run_cli("--atlas", odd, "check")
    assert check.returncode == 0 and "\x1b" not in check.stdout and "\x07" not in check.stdout
    assert len(check.stdout.splitlines()) == 1
    line = assert_one_error_line(
        run_cli("--atlas", minilm_atlas, "search", "fire", "--model", "m\x1b[2Jx")
    )
    assert "\x1b" not in line


def test_every_listing_command_takes_format(minilm_atlas: Path) -> None:
    for fmt in ("table", "json", "csv"):
        result = run_cli("--atlas", minilm_atlas, "models", "--format", fmt)
        assert result.returncode == 0, result.stderr
    (row,) = json.loads(run_cli("--atlas", minilm_atlas, "models", "--format", "json").stdout)
    assert row["model_id"] == "minilm" and row["directions"] == 13824 and row["size"] > 1e6
    csv_lines = run_cli("--atlas", minilm_atlas, "models", "--format", "csv").stdout.splitlines()
    assert csv_lines[0].startswith("model_id,") and csv_lines[1].startswith("minilm,")
    assert "--tokens" in run_cli("search", "--help").stdout


@pytest.mark.slow
def test_broken_pipe_ends_quietly(minilm_atlas: Path) -> None:
    command = [*CLI, "--atlas", str(minilm_atlas), "sql", "SELECT * FROM range(200000)"]
    head = subprocess.run(
        " ".join(f"'{c}'" for c in command) + " | head -2",
        shell=True,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert head.stdout.splitlines()[0].strip() == "range" and head.stderr == ""


def test_trace_model_filter_counts_towards_the_limit(minilm_atlas: Path, tmp_path: Path) -> None:
    from tests.support.tiny_models import ingest_loaded, tiny_gpt2

    root = tmp_path / "atlas"
    import shutil

    shutil.copytree(minilm_atlas, root)
    ingest_loaded(root, tiny_gpt2(), "tiny")
    with atlas.open(root) as a:
        steps = a.trace(432, min_cos=0.05, hops=2, limit=15, model="tiny")
        found = [s for s in steps if s.hop > 0]  # the origin (minilm) is one of the 15
        assert len(found) == 14 and {s.hit.model_id for s in found} == {"tiny"}


def test_bundle_manifest_with_a_string_version_is_refused_clearly(
    minilm_atlas: Path, tmp_path: Path
) -> None:
    import io
    import tarfile

    bundle = tmp_path / "b.bundle"
    assert run_cli("--atlas", minilm_atlas, "export", "minilm", "-o", bundle).returncode == 0
    with tarfile.open(bundle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    manifest = json.loads(members[0][1])
    manifest["format_version"] = "1"
    payload = json.dumps(manifest).encode()
    with tarfile.open(tmp_path / "bad.bundle", "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
        for member, data in members[1:]:
            tar.addfile(member, io.BytesIO(data))
    line = assert_one_error_line(
        run_cli("--atlas", tmp_path / "x", "load", tmp_path / "bad.bundle")
    )
    assert "format_version '1' is not a positive whole number" in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda p: np.save(p, np.array(["a", "b"])), "must hold real numbers"),
        (lambda p: np.save(p, np.ones(384, complex)), "must hold real numbers"),
        (lambda p: p.write_bytes(b""), "cannot read"),
        (lambda p: p.write_bytes(b"\x00" * 64), "cannot read"),
        (lambda p: np.save(p, np.zeros(384)), "zero or not finite"),
        (lambda p: np.save(p, np.ones(7)), "holds 7 values"),
    ],
)
def test_bad_vector_files_are_one_error_line(
    minilm_atlas: Path, tmp_path: Path, content: Callable[[Path], Any], message: str
) -> None:
    path = tmp_path / "v.npy"
    content(path)
    line = assert_one_error_line(run_cli("--atlas", minilm_atlas, "search", "--vector", path))
    assert message in line


@pytest.mark.slow
def test_ingest_leaves_the_hub_settings_as_it_found_them(tmp_path: Path) -> None:
    """A later hub download in the same process must not be blocked by an earlier ingest."""
    import huggingface_hub.constants as hub_constants

    from ingest.job import IngestOptions, ingest
    from tests.support.helpers import quiet

    saved = {k: os.environ.pop(k, None) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    flag = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = False
    try:
        ingest(tmp_path / "a", IngestOptions(model="minilm", device="cpu", max_rank=2), log=quiet)
        assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
        assert hub_constants.HF_HUB_OFFLINE is False
    finally:
        hub_constants.HF_HUB_OFFLINE = flag
        os.environ.update({k: v for k, v in saved.items() if v is not None})


@pytest.mark.slow  # a CLI process as another user
def test_write_on_a_read_only_atlas_says_permission_denied(minilm_atlas: Path) -> None:
    import tempfile

    # a folder an unprivileged user can reach (pytest's own are private to their owner)
    base = Path(tempfile.mkdtemp(prefix="svd-atlas-ro-"))
    base.chmod(0o755)
    root = base / "ro"
    shutil.copytree(minilm_atlas, root)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        run = _cli_that_cannot_write(root)
        command = ["--atlas", str(root), "sql", "--write", "CREATE TABLE t AS SELECT 1"]
        line = assert_one_error_line(run(command))
        assert "permission denied" in line.lower() and "another process" not in line
        reading = run(["--atlas", str(root), "sql", "SELECT count(*) FROM models"])
        assert reading.returncode == 0, reading.stderr  # reading a read-only atlas is fine
        assert not (root / "user.duckdb").exists()
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(base)


RunCli = Callable[[list[str]], subprocess.CompletedProcess[str]]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
# Run as the unprivileged user: import the CLI, then try to create a file in the folder given.
_PROBE = """
import sys
try:
    import atlas.cli
except BaseException as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(3)
try:
    open(sys.argv[1] + "/probe", "x").close()
except PermissionError:
    sys.exit(0)
sys.exit(4)
"""


def _cli_that_cannot_write(root: Path) -> RunCli:
    """The CLI as a process that file modes keep from writing ``root``: this one (in-process),
    or, where this one ignores modes (root), the CLI as user nobody; a skip naming what is
    missing when neither can be had."""
    if not _can_create_in(root):
        return lambda args: run_cli(*args)
    if os.geteuid() != 0:
        pytest.skip(
            f"this process (uid {os.geteuid()}, not root) can write {root}, a folder of mode "
            "555: file modes do not bind it, and only root can switch user"
        )
    if shutil.which("setpriv") is None:
        pytest.skip(
            "the tests run as root, which ignores file modes, and setpriv (util-linux), which "
            "would run the CLI as user nobody, is not installed"
        )
    probe = subprocess.run(
        [*NOBODY, sys.executable, "-c", _PROBE, str(root)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert probe.returncode != 4, f"user nobody can write {root}, a folder of mode 555"
    if probe.returncode != 0:
        said = (probe.stdout.strip() or probe.stderr.strip()).splitlines()
        pytest.skip(
            "the tests run as root, which ignores file modes, and user nobody (uid 65534) "
            f"cannot run this interpreter and import its packages ({sys.prefix}: "
            f"{said[-1] if said else f'exit {probe.returncode}'}): run the tests as a user "
            "other than root, or with the interpreter and packages readable to all"
        )
    return lambda args: subprocess.run(
        [*NOBODY, *CLI, *args], capture_output=True, text=True, env=cli_env(), timeout=120
    )


def _can_create_in(folder: Path) -> bool:
    """Whether this process can create a file in ``folder`` (tried, not judged by its mode)."""
    probe = folder / ".write-probe"
    try:
        probe.touch(exist_ok=False)
    except PermissionError:
        return False
    probe.unlink()
    return True


def test_ctrl_c_while_the_arguments_are_parsed_is_the_one_interrupted_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Click's own answer to a KeyboardInterrupt outside a command is "Aborted!" and exit 1."""
    import click

    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(click.Group, "parse_args", interrupted)
    result = run_cli("models")
    assert result.returncode == 130
    assert result.stderr.strip() == "interrupted: the atlas is unchanged"
