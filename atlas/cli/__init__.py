"""The ``svd-atlas`` command line: click wiring and formatting over the library.

Ctrl-C while the command line's modules are still being imported (a second or more on a busy
machine) is the same one line and exit 130 as during a command.
"""

import sys

try:
    from atlas.cli.main import main
except KeyboardInterrupt:
    sys.stderr.write("interrupted: the atlas is unchanged\n")
    raise SystemExit(130) from None

__all__ = ["main"]
