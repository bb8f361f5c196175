"""Every command of the CLI, with bad arguments: one ``Error:`` line, a non-zero exit and no
traceback, whatever is wrong (a missing atlas, an unknown model, a number out of range or not
a number, a path that cannot be read or written, an empty value).

The commands and their parameters come from the click group itself, so a new command or option
is tried here without anyone adding it: each parameter of each command gets the bad values of
its type in turn, in an invocation that is otherwise valid (``GOOD``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from atlas.cli.main import all_commands
from tests.support.helpers import assert_one_error_line, run_cli
from tests.support.tiny_models import ingest_loaded, tiny_gpt2

# slow: every option of every command with bad values (the fast tier keeps test_api_and_cli_edges)
pytestmark = pytest.mark.slow

# A valid invocation of each command against the test atlas (model "tiny"): parameter name ->
# values. Placeholders: {atlas}, {bundle}, {out} (a folder for new files).
GOOD: dict[str, dict[str, list[str]]] = {
    "coherence": {"tokens": ["fire, flame, smoke"]},
    "compare": {"model_a": ["tiny"], "model_b": ["tiny"]},
    "edit": {"model": ["tiny"], "direction_ids": ["0"], "eps": ["0.5"], "prompts": ["hello"]},
    "export": {"model_ids": ["tiny"], "output": ["{out}/tiny.svdatlas"]},
    "ingest": {"models": ["random:llama-tiny"]},
    "load": {"bundle": ["{bundle}"]},
    "open": {"location": ["{atlas}"]},
    "search": {"words": ["fire"]},
    "show": {"target": ["tiny", "0", "0"]},
    "spectrum": {"model": ["tiny"]},
    "sql": {"query": ["SELECT count(*) FROM directions"]},
    "trace": {"direction_id": ["0"]},
}
# Commands that write into the atlas run against a fresh one each time.
WRITERS = ("ingest", "load", "edit")
BAD_NUMBERS = ("nan", "-inf", "1e400", "-1", "abc")
TOO_BIG_ID = "99999999999999999999"  # past int64: ids are looked up, not counted to
# (command, parameter, value) that are valid, not bad: each was checked to mean something.
VALID = {
    ("coherence", "atlas", "{file}/atlas"),  # scores the tokens given; reads no atlas
    ("open", "atlas", "{file}/atlas"),  # opens its LOCATION, not --atlas
    ("search", "min_sigma", "-1"),  # every sigma is >= -1: no filter
    ("trace", "min_sigma", "-1"),
}


def _numeric(param: click.Parameter) -> bool:
    return isinstance(param.type, click.types.IntParamType | click.types.FloatParamType)


def _bad_values(name: str, param: click.Parameter) -> list[list[str]]:
    """The bad values tried for one parameter (each a list: a variadic argument takes all)."""
    if param.name is not None and "model" in param.name:
        return [["no-such-model"], [""], ["a,b"]]
    if param.name == "target":
        return [["no-such-model", "0", "0"], ["tiny", "99", "0"], ["tiny", "x"]]
    if _numeric(param):
        too_big = [TOO_BIG_ID] if isinstance(param, click.Argument) else []
        return [[v] for v in (*BAD_NUMBERS, *too_big)]
    if isinstance(param.type, click.Path | click.File):
        return [["{file}/x"], ["{out}"], ["{out}/missing/x.png"]]
    if isinstance(param.type, click.types.StringParamType) and name not in ("sql", "coherence"):
        return [[""]]
    return []


def _argv(command: click.Command, values: dict[str, list[str]]) -> list[str]:
    argv: list[str] = []
    for param in command.params:
        given = values.get(param.name or "")
        if given is None:
            continue
        if isinstance(param, click.Argument):
            argv += given
        else:
            for value in given:
                argv += [param.opts[-1], value]
    return argv


def cases() -> Iterator[tuple[str, str, str, list[str]]]:
    """(command, what is bad, the bad value, the command's arguments)."""
    for name, command in sorted(all_commands().items()):
        good = GOOD.get(name, {})
        yield (
            name,
            "atlas",
            "{file}/atlas",
            ["--atlas", "{file}/atlas", name, *_argv(command, good)],
        )
        for param in command.params:
            for bad in _bad_values(name, param):
                argv = _argv(command, {**good, param.name or "": bad})
                yield name, param.name or "", " ".join(bad), [name, *argv]


CASES = [pytest.param(*c, id=f"{c[0]}-{c[1]}={c[2]!r}") for c in cases() if c[:3] not in VALID]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The test atlas (one tiny model), a bundle of it, a folder for outputs, a plain file."""
    root = tmp_path_factory.mktemp("bad-args")
    ingest_loaded(root / "atlas", tiny_gpt2(n_layers=2), "tiny")
    bundle = root / "tiny.svdatlas"
    assert run_cli("--atlas", root / "atlas", "export", "-o", bundle).returncode == 0
    (root / "file").write_text("not a folder\n")
    (root / "out").mkdir()
    return {"atlas": str(root / "atlas"), "bundle": str(bundle), "out": str(root / "out"),
            "file": str(root / "file")}  # fmt: skip


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` with arguments that are wrongly accepted exits 0 instead of serving forever."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)


def test_every_command_is_tried() -> None:
    assert {c.values[0] for c in CASES} == set(all_commands())
    assert set(GOOD) <= set(all_commands())


@pytest.mark.parametrize(("name", "bad", "value", "argv"), CASES)
def test_a_bad_argument_is_one_error_line(
    name: str, bad: str, value: str, argv: list[str], places: dict[str, str], tmp_path: Path
) -> None:
    where = dict(places)
    if name in WRITERS:  # a fresh copy, so that what one case writes cannot hide another
        where["atlas"] = str(tmp_path / "atlas")
        shutil.copytree(places["atlas"], where["atlas"])
    args = [a.format(**where) for a in argv]
    if args[0] != "--atlas":
        args = ["--atlas", where["atlas"], *args]
    result = run_cli(*args)
    assert_one_error_line(result)
