"""What the library's interfaces (the CLI, the HTTP server) share with it, in one public place.

The names, defaults and column orders of every query (matrix kinds, sides and tables are the
vocabulary users write SQL against), the errors they render, how values become strict JSON,
CSV cells and printable text, and the helpers that draw a spectrum or read a file of prompts.
Each query's parameters and their limits are in :mod:`atlas.params`. The CLI and the server
import the library only through :mod:`atlas`, :mod:`atlas.api`, :mod:`atlas.writing`,
:mod:`atlas.params`, :mod:`atlas.errors` and this module
(an import-linter contract in ``pyproject.toml`` holds them to it), so a name here is one the
library promises to keep. torch is imported only by :func:`read_pairs`, when it is called.
"""

from __future__ import annotations

from pathlib import Path

from atlas.core.cancel import Deadline, Work, stoppable
from atlas.core.contract import JUDGED_SQL, KINDS, MLP_KINDS, SIDES, TABLES, Kind
from atlas.core.errors import MemoryLimitExceeded, NotFound, QueryTimeout, no_models
from atlas.core.indexes import search_threads, usable_cores
from atlas.core.jsondata import (
    csv_cell,
    dumps,
    jsonable,
    printable,
    records_json,
    result_rows,
    table_cell,
    text_slices,
    unique_names,
)
from atlas.core.layout import DEFAULT_ATLAS
from atlas.core.memlimit import DEFAULT_MEMORY_LIMIT, format_bytes, parse_memory_limit
from atlas.core.sqlguard import is_interrupt
from atlas.core.versions import version
from atlas.core.views import VIEWS
from query.cards import DEFAULT_TOP, MatrixStat
from query.compare import COLUMNS as COMPARE_COLUMNS
from query.search import HIT_FIELDS, SPACES
from query.spectrum import DEFAULT_JUMP_FACTOR, MATRIX_COLUMNS
from query.spectrum_plot import (
    check_plot_path,
    plot_spectra,
    singular_values_figure,
    spectra_figure,
)
from query.trace import DEFAULT_MIN_COS, TRACE_FIELDS
from query.vectors import load_npy

__all__ = [
    "COMPARE_COLUMNS",
    "JUDGED_SQL",
    "KINDS",
    "MLP_KINDS",
    "SIDES",
    "TABLES",
    "Kind",
    "csv_cell",
    "dumps",
    "jsonable",
    "records_json",
    "printable",
    "result_rows",
    "text_slices",
    "table_cell",
    "unique_names",
    "DEFAULT_ATLAS",
    "DEFAULT_JUMP_FACTOR",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_MIN_COS",
    "DEFAULT_TOP",
    "HIT_FIELDS",
    "MATRIX_COLUMNS",
    "SPACES",
    "TRACE_FIELDS",
    "VIEWS",
    "MatrixStat",
    "MemoryLimitExceeded",
    "NotFound",
    "QueryTimeout",
    "Deadline",
    "Work",
    "check_plot_path",
    "format_bytes",
    "is_interrupt",
    "load_npy",
    "no_models",
    "parse_memory_limit",
    "plot_spectra",
    "read_pairs",
    "search_threads",
    "singular_values_figure",
    "stoppable",
    "spectra_figure",
    "usable_cores",
    "version",
]


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """The (prompt, target) pairs of a file, one per line (:func:`query.probe.read_pairs`)."""
    from query.probe import read_pairs as read  # imports torch

    return read(path)
