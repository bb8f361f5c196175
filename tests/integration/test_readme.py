"""The README's tour is true: every command it shows prints what the README says it prints.

The README shows ``$ svd-atlas ...`` commands in fenced blocks, each followed by its output.
Each one runs here, through the real CLI, against an atlas holding the bundled MiniLM (the
session's ``minilm_atlas``; the README's commands omit ``--atlas`` because its atlas is the
default ``./data/atlas``). What a command prints must have the shape shown: every table the
same header, the same number of rows and the same first column (ids, layers); every other line
the same first words. Outputs are deterministic on the CPU, so the words themselves (tokens,
ids, kinds) must match too, and numbers must agree to the last digit shown, give or take one
unit there. The README's Python lines run against the same atlas.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(?P<language>[\w-]*)\n(?P<body>.*?)^```", re.S | re.M)
PROMPT = "$ "
# A table cell: characters with single spaces inside, cells apart by two spaces or more.
CELL = re.compile(r"[^ ](?:[^ ]| (?! ))*")
COLUMN_NAME = re.compile(r"[a-z_]+(?: [+-])?")
INTEGER = re.compile(r"[+-]?\d+")
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?", re.I)
# What the README's own atlas is called in its Python lines.
README_ATLAS = '"data/atlas"'


@dataclass(frozen=True)
class Shown:
    """One ``$ svd-atlas ...`` command of the README and the output printed after it."""

    command: str
    output: str

    @property
    def args(self) -> list[str]:
        return shlex.split(self.command)[1:]

    def __str__(self) -> str:
        return self.command.splitlines()[0][:60]


@dataclass
class Table:
    """An aligned table as the CLI prints it: a header of column names, then rows."""

    header: str
    rows: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return CELL.findall(self.header)

    def first_column(self) -> list[str]:
        cells = list(CELL.finditer(self.header))
        end = cells[1].start() if len(cells) > 1 else None
        return [row[:end].strip() for row in self.rows]


def fenced_blocks(text: str, language: str = "") -> list[str]:
    return [m["body"] for m in FENCE.finditer(text) if m["language"] == language]


def _complete(command: str) -> bool:
    """Whether ``command`` is a whole shell command (its quotes closed)."""
    try:
        shlex.split(command)
    except ValueError:
        return False
    return True


def shown_commands(text: str) -> list[Shown]:
    """Every ``$ svd-atlas`` command of ``text``'s plain fenced blocks, with its output (the
    lines up to the next prompt or the end of the block). A command may span lines."""
    shown = []
    for block in fenced_blocks(text):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith(PROMPT + "svd-atlas "):
                i += 1
                continue
            command = lines[i].removeprefix(PROMPT)
            i += 1
            while not _complete(command) and i < len(lines):
                command += "\n" + lines[i]
                i += 1
            output = []
            while i < len(lines) and not lines[i].startswith(PROMPT):
                output.append(lines[i])
                i += 1
            shown.append(Shown(command, "\n".join(output)))
    return shown


def _is_header(line: str) -> bool:
    cells = CELL.findall(line)
    return len(cells) >= 2 and all(COLUMN_NAME.fullmatch(c) for c in cells)


def segments(output: str) -> list[Table | str]:
    """``output`` as tables and other (text) lines, blank lines dropped."""
    out: list[Table | str] = []
    table: Table | None = None
    for line in (raw.rstrip() for raw in output.splitlines()):
        if not line.strip():
            table = None
        elif table is not None:
            table.rows.append(line)
        elif _is_header(line):
            table = Table(line)
            out.append(table)
        else:
            out.append(line)
    return out


def _same_number(shown: str, printed: str) -> bool:
    """``printed`` is ``shown`` give or take one unit of the last digit shown (integers: equal)."""
    if INTEGER.fullmatch(shown):
        return shown == printed
    mantissa, _, exponent = shown.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    unit = 10.0 ** (int(exponent or 0) - decimals)
    return math.isclose(float(shown), float(printed), rel_tol=1e-9, abs_tol=unit * 1.01)


def same_words(shown: str, printed: str) -> bool:
    """The same words, numbers within the last digit shown."""
    a, b = (line.replace(",", " ").split() for line in (shown, printed))
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if NUMBER.fullmatch(x) and NUMBER.fullmatch(y):
            if not _same_number(x, y):
                return False
        elif x != y:
            return False
    return True


README_TEXT = README.read_text(encoding="utf-8")
# ingest is shown, not rerun (the fixture is that ingest); serve runs until stopped, and
# tests/integration/test_server_live.py replays the README's server calls
TOUR = [s for s in shown_commands(README_TEXT) if s.args[0] not in ("ingest", "serve")]


@pytest.fixture(scope="module")
def printed(minilm_atlas: Path) -> Callable[[Shown], str]:
    """What a shown command prints against the MiniLM atlas (each command runs once)."""
    seen: dict[str, str] = {}

    def run(shown: Shown) -> str:
        if shown.command not in seen:
            result = run_cli("--atlas", minilm_atlas, *shown.args)
            assert result.returncode == 0, f"{shown} failed:\n{result.stderr}"
            seen[shown.command] = result.stdout
        return seen[shown.command]

    return run


def test_the_readme_shows_the_tour() -> None:
    commands = [s.args[0] for s in shown_commands(README_TEXT)]
    assert commands[0] == "ingest", "the tour starts by ingesting the bundled model"
    assert "minilm" in shown_commands(README_TEXT)[0].args
    for command in ("search", "show", "sql", "trace"):
        assert command in commands, f"the tour shows no `svd-atlas {command}`"
    assert all(s.output.strip() for s in shown_commands(README_TEXT)), "a command lacks output"


@pytest.mark.parametrize("shown", TOUR, ids=str)
def test_each_command_prints_the_shape_shown(shown: Shown, printed: Callable[[Shown], str]) -> None:
    expected, actual = segments(shown.output), segments(printed(shown))
    assert [type(s) for s in actual] == [type(s) for s in expected], printed(shown)
    for want, got in zip(expected, actual, strict=True):
        if isinstance(want, Table):
            assert isinstance(got, Table)
            assert got.columns == want.columns
            assert len(got.rows) == len(want.rows), printed(shown)
            assert got.first_column() == want.first_column()
        else:
            assert isinstance(got, str)
            assert same_words(want.split()[0], got.split()[0]), (want, got)


@pytest.mark.parametrize("shown", TOUR, ids=str)
def test_each_command_prints_the_words_and_numbers_shown(
    shown: Shown, printed: Callable[[Shown], str]
) -> None:
    want = [line for line in shown.output.splitlines() if line.strip()]
    got = [line for line in printed(shown).splitlines() if line.strip()]
    assert len(got) == len(want)
    for w, g in zip(want, got, strict=True):
        assert same_words(w, g), f"README: {w}\nprinted: {g}"


def test_the_python_lines_run(minilm_atlas: Path) -> None:
    (code,) = [b for b in fenced_blocks(README_TEXT, "python") if README_ATLAS in b]
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 6, "the tour's Python is a handful of lines"
    namespace: dict[str, object] = {}
    exec(code.replace(README_ATLAS, repr(str(minilm_atlas))), namespace)
    assert namespace["hits"], "the README's search finds nothing"


def test_the_command_table_names_every_command() -> None:
    from atlas.cli.main import all_commands

    listed = set(re.findall(r"^\| `([a-z]+)[ `]", README_TEXT, re.M))
    assert listed == set(all_commands())


def test_every_linked_document_exists() -> None:
    links = re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", README_TEXT)
    assert "docs/architecture.md" in links
    for link in links:
        assert (ROOT / link).is_file(), link


INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
SET_UP = [
    INSTALL + "pip install -e . && svd-atlas ingest minilm --replace",
    INSTALL + "pip install -e '.[test]' && pytest -q",
]


def test_set_up_is_one_command_to_ingest_and_one_to_test() -> None:
    assert [b.strip() for b in fenced_blocks(README_TEXT, "bash")][:2] == SET_UP
