"""The ``svd-atlas`` command group, and how failures reach the terminal.

Heavy libraries (torch, transformer_lens) are imported inside the commands that need them, so
that query commands start fast.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import warnings
from typing import Any, NoReturn

import click

from atlas.cli.params import cli_message, render
from atlas.errors import AtlasError, AtlasWarning, BadParameter
from atlas.interface import DEFAULT_ATLAS, is_interrupt, printable

SIGPIPE_EXIT = 141  # what a process killed by SIGPIPE reports, as `yes | head` does
UNCHANGED = "the atlas is unchanged"


class _BadValue(click.ClickException):
    """A value the library refused: exit 2, as click's own usage errors."""

    exit_code = 2


def _one_line_usage(exc: click.UsageError) -> click.ClickException:
    """Click's usage error as one line naming where help is, instead of the usage block,
    a blank line and the error that click prints; but the help itself where none was asked
    for (``svd-atlas`` alone), as click shows it."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc
    where = exc.ctx.command_path if exc.ctx is not None else "svd-atlas"
    if isinstance(exc, click.NoSuchOption) and exc.option_name == "--atlas" and exc.ctx:
        command = exc.ctx.info_name
        return _BadValue(
            f"--atlas goes before the command: svd-atlas --atlas PATH {command} ... "
            f"(see: svd-atlas --help)"
        )
    return _BadValue(f"{exc.format_message()} (see: {where} --help)")


# Which module under ``atlas.cli`` holds each command. A command's module is imported when the
# command runs (or help lists it), so that `svd-atlas search` does not import what `ingest`,
# `edit` or `serve` need: about 0.1 s of a fresh query process.
COMMAND_MODULES = {
    "ingest": "ingest",
    "models": "models",
    "open": "models",
    "sql": "query",
    "search": "query",
    "trace": "query",
    "show": "query",
    "spectrum": "spectrum",
    "circuits": "circuits",
    "coherence": "coherence",
    "compare": "compare",
    "edit": "edit",
    "export": "exchange",
    "load": "exchange",
    "check": "check",
    "serve": "serve",
}


class _Cli(click.Group):
    """User errors become one line on stderr and a non-zero exit, never a traceback. Ctrl-C
    is one line and exit 130, whether Python or DuckDB reports it (``sqlguard.is_interrupt``),
    and whenever it comes: while the arguments are parsed too (click's own answer there is
    "Aborted!" and exit 1)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMAND_MODULES and cmd_name not in self.commands:
            module = importlib.import_module(f"atlas.cli.{COMMAND_MODULES[cmd_name]}")
            for command in module.COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None
        except KeyboardInterrupt:
            _interrupted()

    def invoke(self, ctx: click.Context) -> Any:
        try:  # a Ctrl-C while a failure below is put into words is a Ctrl-C too
            try:
                return super().invoke(ctx)
            except AtlasError as exc:
                failure = _BadValue if isinstance(exc, BadParameter) else click.ClickException
                raise failure(printable(cli_message(exc, ctx))) from None
            except click.UsageError as exc:  # a command's own arguments, or no such command
                raise _one_line_usage(exc) from None
            except BrokenPipeError:
                # the reader of our output went away (`| head`): stop quietly
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                sys.exit(SIGPIPE_EXIT)
            except OSError as exc:
                where = f": {exc.filename}" if exc.filename else ""
                raise click.ClickException(printable(f"{exc.strerror or exc}{where}")) from None
            except Exception as exc:
                if not is_interrupt(exc):
                    raise
                _interrupted()
        except KeyboardInterrupt:
            _interrupted()
        finally:
            if _process_ends_with_the_command:
                # its output is written or its failure raised: a Ctrl-C while click winds up
                # (the error line, the context's closing) would end it as "Aborted!", exit 1
                _outcome_decided()


# Set by :func:`main`: this interpreter ends with the command (not so in-process, as under
# click's CliRunner, whose callers keep their Ctrl-C).
_process_ends_with_the_command = False


def _outcome_decided() -> None:
    """The command has ended and said how: Ctrl-C from here on has nothing left to stop, and
    would only make the interpreter die of SIGINT on its way out, after the outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# The signal that stopped the command. SIGTERM (a scheduler's or `kill`'s stop) is handled as
# Ctrl-C is, so a stopped command cleans up the same way either way (a bundle's private copy,
# a model half written); the exit status tells the two apart, as a shell's does (128 + it).
_stopped_by = signal.SIGINT


def _terminate(_signum: int, _frame: Any) -> NoReturn:
    global _stopped_by
    _stopped_by = signal.SIGTERM
    raise KeyboardInterrupt


def stopped(what: str = UNCHANGED) -> NoReturn:
    """End a command that Ctrl-C or SIGTERM stopped: one line saying ``what`` became of the
    atlas, and exit 130 or 143."""
    word = "terminated" if _stopped_by == signal.SIGTERM else "interrupted"
    click.echo(f"{word}: {what}", err=True)
    sys.exit(128 + _stopped_by)


def _interrupted() -> NoReturn:
    stopped()


def show_note(message: Any, category: type, *_args: Any, **_kwargs: Any) -> None:
    label = "note" if issubclass(category, AtlasWarning) else "warning"
    text = render(str(message), click.get_current_context(silent=True))
    click.echo(f"{label}: {printable(text)}", err=True)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="svd-atlas", prog_name="svd-atlas")
@click.option(
    "--atlas",
    "atlas_path",
    envvar="SVD_ATLAS",
    default=DEFAULT_ATLAS,
    show_default=True,
    help="Atlas directory, bundle file or Parquet tree (env SVD_ATLAS).",
)
@click.pass_context
def cli(ctx: click.Context, atlas_path: str) -> None:
    """A searchable atlas of the SVDs of transformer weight matrices."""
    ctx.obj = {"atlas": atlas_path}
    warnings.simplefilter("always", AtlasWarning)
    warnings.showwarning = show_note


def all_commands() -> dict[str, click.Command]:
    """Every command by name, each module imported (what help lists; tests walk them)."""
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cli.get_command(ctx, name)
    return dict(cli.commands)


def main() -> None:
    global _process_ends_with_the_command
    _process_ends_with_the_command = True
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli(prog_name="svd-atlas")
    finally:  # also after help, the version or a usage error, which end before a command runs
        _outcome_decided()
