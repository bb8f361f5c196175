"""The ``svd-atlas`` command line: click wiring and formatting over the library."""

from atlas.cli.main import main

__all__ = ["main"]
