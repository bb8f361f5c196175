"""Every error and warning svd-atlas raises (public as :mod:`atlas.errors`).

Anything raised as :class:`AtlasError` is a mistake the user can fix (a bad value, a model
name the atlas lacks, a path that is not writable). Each one knows:

- ``param``: the parameter at fault, by its one name (``layer``, ``k``, ``direction``), or
  None when no single parameter is;
- ``hint``: what to do about it, or None;
- ``status``: the HTTP status the server answers it with (a class attribute).

A message starts with the parameter at fault (``layer: bad layer range 'abc' ...``) and speaks
of other parameters by name, in backticks (```space``` token): never as a CLI flag. Each
interface renders them in its own terms: Python and HTTP show the message as it is, the CLI
turns the parameter names into its flags (``layer`` -> ``--layer``) and prints one line.

They are defined here, in the storage core (the lowest layer raises them too); the public
module is :mod:`atlas.errors`.
"""

from __future__ import annotations

from typing import ClassVar


class AtlasError(Exception):
    """A failure caused by the user's input or environment, with a one-line message."""

    status: ClassVar[int] = 400

    def __init__(self, message: str = "", *, param: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.hint = hint

    def __str__(self) -> str:
        return self.render(self.param)

    def render(self, param: str | None) -> str:
        """The one line, the parameter called ``param`` (the CLI passes its flag)."""
        text = f"{param}: {self.message}" if param else self.message
        return f"{text}; {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, object]:
        """The error as the server's JSON answer gives it."""
        return {"error": str(self), "param": self.param, "hint": self.hint, "status": self.status}


class BadParameter(AtlasError):
    """A parameter's value is refused (a wrong type, out of its range, unknown): ``param``
    names it. The CLI exits 2 for it, as for any usage error."""


class NotFound(AtlasError):
    """The named model, matrix or direction is not in the atlas."""

    status = 404


class NoMatch(AtlasError):
    """A query that nothing in the models searched can match: a word no vocabulary has, a
    layer or head no model has (a bad query, not :class:`NotFound`, which names a model or
    direction the atlas lacks). The message names what matched nothing and in which models."""


class NoVectors(AtlasError):
    """The model was loaded without direction vectors: nothing to search in residual space."""


class DamagedIndex(AtlasError):
    """A model's FAISS index disagrees with its store (refused before, or as, it is used); the
    message names the model and the repair. Other models stay searchable. The server's data,
    not the request, is at fault: 503."""

    status = 503


class NotReady(AtlasError):
    """What was asked needs a one-off computation that is under way: ask again shortly."""

    status = 503


class QueryTimeout(AtlasError):
    """A statement ran past its time limit and was stopped."""

    status = 504


class MemoryLimitExceeded(AtlasError):
    """A statement needed more memory than its session's limit (507 Insufficient Storage: the
    server cannot hold what it needs)."""

    status = 507


class ModelBusy(AtlasError):
    """Another process is writing the same model id into the same atlas."""

    status = 409


class UnsupportedFormat(AtlasError):
    """An atlas, bundle or tree of a format version this svd-atlas does not read: newer than
    its own, or older than the one before (``atlas.core.formats``). Nothing repairs it here."""


class PreviousFormat(AtlasError):
    """An atlas directory of an older format version this svd-atlas upgrades: it is read and written
    only once ``svd-atlas check --repair`` has upgraded it (``atlas.core.upgrade``)."""


class AtlasWarning(UserWarning):
    """Something a reader of the results should know (a damaged model left out, a word the
    vocabulary lacks, an approximate index). The CLI prints it as one ``note:`` line on stderr."""


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """A message on one line: whitespace collapsed, DuckDB's caret diagrams dropped, at most
    ``limit`` characters (library messages can span pages), a longer one cut after a word
    and marked so."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = " ".join(line for line in lines if not set(line) <= {"^", " "})
    if not joined and isinstance(error, BaseException):
        joined = type(error).__name__
    if len(joined) <= limit:
        return joined
    cut = joined[: limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut[limit // 2 :] else cut) + "…"


def no_models(location: str, damaged: list[str]) -> str:
    """What an atlas with no model to read holds: nothing yet, or only models left out as
    damaged (an empty atlas would send its user to ingest what is there)."""
    if damaged:
        return (
            f"{location} holds no readable models: {', '.join(map(repr, damaged))} left out as "
            "damaged (`check` names the damage)"
        )
    return f"{location} holds no models yet (`ingest` adds one)"
