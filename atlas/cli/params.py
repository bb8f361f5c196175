"""The CLI's side of :mod:`atlas.params`: click options made from the parameter models, the
library's messages rendered in terms of flags, and the options' tables in docs/cli.md
(:func:`write_reference` rewrites them).

Each field of a model becomes an option of the same name (``min_cos`` -> ``--min-cos``, a
one-letter name -> ``-k``), with the field's default and its description and limits as help.
The option passes its text to the library unchanged: the model validates it, so a bad value
gets the same message from the CLI as from Python and HTTP. A required field is an argument.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from atlas.errors import AtlasError
from atlas.params import (
    CompositionParams,
    MatrixCardParams,
    SearchParams,
    SpectrumParams,
    SqlParams,
    TraceParams,
    cli_flag,
)

F = Callable[..., Any]


def options(model: type[BaseModel], exclude: Iterable[str] = ()) -> Callable[[F], F]:
    """A decorator adding one click parameter per field of ``model`` (but ``exclude``), in the
    model's order."""
    skipped = set(exclude)

    def decorate(fn: F) -> F:
        for name, field in reversed(model.model_fields.items()):
            if name not in skipped:
                fn = parameter(name, field)(fn)
        return fn

    return decorate


def parameter(name: str, field: FieldInfo) -> Callable[[F], F]:
    """The click argument (a required field) or option for one field."""
    if field.is_required():
        return click.argument(name, metavar=name.upper())
    base = _base(field.annotation)
    if base is bool:
        return click.option(
            cli_flag(name), name, is_flag=True, default=field.default, help=field.description
        )
    choices = typing.get_args(base) if typing.get_origin(base) is typing.Literal else None
    return click.option(
        cli_flag(name),
        name,
        type=click.STRING,  # the model converts and checks it, in the library's words
        default=field.default,
        show_default=field.default is not None,
        metavar=_metavar(base, choices),
        help=help_text(field),
        callback=_not_blank,
    )


def _not_blank(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--top ''`` is refused: an option given must have a value (an unset shell variable is
    a mistake, not a request for the default; HTTP forms, by contrast, send blanks for fields
    left alone, and the models take those as absent)."""
    if value is not None and not value.strip():
        raise click.BadParameter("give a value, or leave the option out", ctx, param)
    return value


def help_text(field: FieldInfo) -> str:
    """A field's description and its limits: ``(1 to 1000)``, ``(above 1)``, ``(at least 0)``."""
    bounds = {
        kind: getattr(m, kind)
        for m in field.metadata
        for kind in ("ge", "gt", "le")
        if type(m).__name__.lower() == kind
    }
    low = f"{bounds['ge']:g}" if "ge" in bounds else None
    above = f"{bounds['gt']:g}" if "gt" in bounds else None
    high = f"{bounds['le']:g}" if "le" in bounds else None
    if low is not None:
        limits = f"{low} to {high}" if high is not None else f"at least {low}"
    elif above is not None:
        limits = f"above {above}" + (f", up to {high}" if high is not None else "")
    else:
        return field.description or ""
    return f"{(field.description or '').rstrip('.')} ({limits})."


def _base(annotation: Any) -> Any:
    """The type under ``Annotated`` and ``| None``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base(args[0]) if len(args) == 1 else annotation
    return annotation


def _metavar(base: Any, choices: tuple[Any, ...] | None) -> str:
    if choices:
        return "[" + "|".join(str(c) for c in choices) + "]"
    return {int: "N", float: "X"}.get(base, "TEXT")


# -- messages ------------------------------------------------------------------------------

_NAMED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")
_WITH = re.compile(r"`([a-z-]+)` with `([A-Za-z_][A-Za-z0-9_]*)`")


def cli_message(exc: AtlasError, ctx: click.Context | None) -> str:
    """An error's line with its parameter, and those its message names, as flags."""
    names = _vocabulary(ctx)
    param = names.get(exc.param, exc.param) if exc.param else None
    return render(exc.render(param), ctx)


def render(text: str, ctx: click.Context | None) -> str:
    """A library message in the CLI's terms: "`check` with `repair`" as ``svd-atlas check
    --repair``; each parameter named in backticks as the flag (or argument) of the command
    that ran, else of the command that has it; a command's name as ``svd-atlas NAME``; any
    other backticked word as it is."""
    names = _vocabulary(ctx)
    text = _WITH.sub(lambda m: _command_line(m, ctx) or m.group(0), text)
    return _NAMED.sub(lambda m: names.get(m.group(1), m.group(1)), text)


def _command_line(match: re.Match[str], ctx: click.Context | None) -> str | None:
    """``svd-atlas COMMAND --FLAG`` for "`command` with `param`", if the CLI has both."""
    if ctx is None or not isinstance(group := ctx.find_root().command, click.Group):
        return None
    command = group.get_command(ctx.find_root(), match.group(1))
    for param in command.params if command else ():
        if param.name == match.group(2) and isinstance(param, click.Option):
            return f"{ctx.find_root().info_name or 'svd-atlas'} {match.group(1)} {_spelling(param)}"
    return None


def _vocabulary(ctx: click.Context | None) -> dict[str, str]:
    if ctx is None:
        return {}
    root = ctx.find_root()
    group = root.command
    names: dict[str, str] = {}
    commands: dict[str, click.Command] = {}
    if isinstance(group, click.Group):
        commands = {n: group.get_command(root, n) for n in group.list_commands(root)}  # type: ignore[misc]
        for command in commands.values():
            for param in command.params if command else ():
                names.setdefault(param.name or "", _spelling(param))
        for name in commands:
            names.setdefault(name, f"{root.info_name or 'svd-atlas'} {name}")
    for param in group.params:
        names[param.name or ""] = _spelling(param)
    running = commands.get(root.invoked_subcommand or "")
    for param in running.params if running else ():
        names[param.name or ""] = _spelling(param)
    return names


def _spelling(param: click.Parameter) -> str:
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return param.human_readable_name.strip("[].")


# -- the reference (docs/cli.md) -----------------------------------------------------------

# command -> its model, and the fields it takes as arguments instead (search's WORDS)
REFERENCE: dict[str, tuple[type[BaseModel], tuple[str, ...]]] = {
    "search": (SearchParams, ("text",)),
    "trace": (TraceParams, ()),
    "show": (MatrixCardParams, ()),
    "spectrum": (SpectrumParams, ()),
    "sql": (SqlParams, ()),
    "circuits": (CompositionParams, ("layer", "head")),
}
_BLOCK = re.compile(r"(<!-- options: (\w+) -->\n).*?(<!-- /options -->)", re.DOTALL)


def options_table(model: type[BaseModel], arguments: tuple[str, ...] = ()) -> str:
    """The Markdown table of a model's options, as ``--help`` gives them (required fields and
    ``arguments`` are arguments, named in the usage line instead)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        if field.is_required() or name in arguments:
            continue
        base = _base(field.annotation)
        choices = typing.get_args(base) if typing.get_origin(base) is typing.Literal else None
        shown = cli_flag(name) if base is bool else f"{cli_flag(name)} {_metavar(base, choices)}"
        default = "" if field.default is None or field.default is False else f"`{field.default}`"
        cells = [f"`{shown}`", default, help_text(field)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def update_reference(text: str) -> str:
    """``text`` with each ``<!-- options: COMMAND -->`` block made from the command's model."""
    return _BLOCK.sub(
        lambda m: m.group(1) + options_table(*REFERENCE[m.group(2)]) + m.group(3), text
    )


def write_reference(page: str) -> None:
    """Rewrite the option tables of ``page`` (docs/cli.md) from the models."""
    from pathlib import Path

    path = Path(page)
    path.write_text(update_reference(path.read_text(encoding="utf-8")), encoding="utf-8")
