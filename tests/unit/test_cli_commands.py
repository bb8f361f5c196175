"""The command group imports a command's module only when the command is asked for, so the map
from names to modules must name every command each module defines, and only those."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys

import atlas.cli
from atlas.cli.main import COMMAND_MODULES, all_commands


def test_every_command_module_maps_its_commands_and_only_those() -> None:
    defined = {}
    for info in pkgutil.iter_modules(atlas.cli.__path__):
        module = importlib.import_module(f"atlas.cli.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            assert command.name not in defined, f"two modules define {command.name}"
            defined[command.name] = info.name
    assert defined == COMMAND_MODULES
    assert {name: c.name for name, c in all_commands().items()} == {n: n for n in defined}


def test_a_query_command_imports_no_other_command_module() -> None:
    code = (
        "import sys\n"
        "from atlas.cli.main import cli\n"
        "cli.main(['search', '--help'], standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.startswith('atlas.cli.')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.removeprefix("atlas.cli.") for m in ast.literal_eval(run.stdout.splitlines()[-1])}
    assert not loaded & (set(COMMAND_MODULES.values()) - {"query"})
    assert "query" in loaded
