"""The one exception type for user-facing failures.

Anything raised as :class:`AtlasError` is a mistake the user can fix (bad model name, a path
that is not writable, an id that does not exist). The CLI prints its message on one line and
exits non-zero; it never shows a traceback for one.
"""


class AtlasError(Exception):
    """A failure caused by the user's input or environment, with a one-line message."""
