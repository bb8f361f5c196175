"""The one exception type for user-facing failures.

Anything raised as :class:`AtlasError` is a mistake the user can fix (bad model name, a path
that is not writable, an id that does not exist). The CLI prints its message on one line and
exits non-zero; it never shows a traceback for one.
"""


class AtlasError(Exception):
    """A failure caused by the user's input or environment, with a one-line message."""


class NotFound(AtlasError):
    """The named model, matrix or direction is not in the atlas (HTTP 404 in the server)."""


class DamagedIndex(AtlasError):
    """A model's FAISS index disagrees with its store (refused before, or as, it is used); the
    message names the model and ``check --repair``. Other models stay searchable."""


class NoMatch(AtlasError):
    """A query that nothing in the models searched can match: a word no vocabulary has, a
    layer or head no model has (HTTP 400, as any bad query, and a non-zero exit in the CLI;
    not :class:`NotFound`, which names a model or direction the atlas lacks). The message
    names what matched nothing and in which models."""


class UnsupportedFormat(AtlasError):
    """An atlas, bundle or tree of a format version this svd-atlas does not read: newer than
    its own, or older than the one before (``atlas.core.formats``). Nothing repairs it here."""


class PreviousFormat(AtlasError):
    """An atlas directory of the format version before this svd-atlas's: it is read and written
    only once ``svd-atlas check --repair`` has upgraded it (``atlas.core.upgrade``)."""


class AtlasWarning(UserWarning):
    """Something a reader of the results should know (a damaged model left out, a word the
    vocabulary lacks, an approximate index). The CLI prints it as one ``note:`` line on stderr."""


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """A message on one line: whitespace collapsed, DuckDB's caret diagrams dropped, at most
    ``limit`` characters (library messages can span pages)."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = " ".join(line for line in lines if not set(line) <= {"^", " "})
    if not joined and isinstance(error, BaseException):
        joined = type(error).__name__
    return joined[:limit]
