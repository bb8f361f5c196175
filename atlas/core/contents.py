"""What a model's rows hold, by the format version that computed them (``models.format_version``).

Format 3 added what an ingest computes from the weights beyond the OV and MLP directions: QK
circuits (kind ``qk``), eigenvalue positivity (``matrices.eigen_positivity``), the composition
of heads (``composition``, ``composition_pairs``), ``models.positional_embedding``, and the
readout of read-side directions through the embedding (``top_tokens`` rows of basis
``embed``). An atlas, bundle or tree of format 1 or 2, upgraded, keeps its rows as they were:
it cannot have those (they need the weights), so the columns format 3 added are NULL there
(``top_tokens.basis`` is ``unembed``: every older readout was through W_U), the tables are
empty, and ``models.format_version`` keeps the older number. What shows circuits or the
embedding readout asks :func:`contents_refusal` first, so an upgraded model is one clear line
saying to re-ingest it, never an empty table or a zero that reads as measured.
"""

from __future__ import annotations

from typing import Any

from atlas.core.errors import AtlasError

CONTENTS_VERSION = 3  # the format whose contents an ingest of this svd-atlas writes
ADDED_TABLES = ("composition", "composition_pairs")  # by format 3
ARTEFACT_VERSION = object()  # a column's value: the older artefact's own format version
# The columns format 3 added, each with its DuckDB type and its value in an older model's rows.
ADDED_COLUMNS: dict[str, dict[str, tuple[str, Any]]] = {
    "models": {
        "positional_embedding": ("VARCHAR", None),
        "format_version": ("INTEGER", ARTEFACT_VERSION),
    },
    "matrices": {"eigen_positivity": ("DOUBLE", None)},
    "top_tokens": {"basis": ("VARCHAR", "unembed")},
}


def added_values(table: str, version: int) -> dict[str, tuple[str, Any]]:
    """The columns of ``table`` that format 3 added, with their type and their value in the
    rows of an artefact of format ``version``."""
    return {
        column: (sql_type, version if value is ARTEFACT_VERSION else value)
        for column, (sql_type, value) in ADDED_COLUMNS.get(table, {}).items()
    }


def added_columns_sql(table: str, version: int, present: set[str] | None = None) -> str:
    """``, <value> AS <column>`` for each column of ``table`` that format 3 added and that a
    relation of format ``version`` lacks (``present``: the columns it has; None: it has none
    of them), to append to a ``SELECT *``."""
    parts = []
    for column, (sql_type, value) in added_values(table, version).items():
        if present is not None and column in present:
            continue
        literal = (
            "NULL"
            if value is None
            else repr(value)
            if isinstance(value, int)
            else ("'" + str(value).replace("'", "''") + "'")
        )
        parts.append(f", {literal}::{sql_type} AS {column}")
    return "".join(parts)


def contents_refusal(model_id: str, version: int | None, what: str) -> AtlasError | None:
    """The refusal to show ``what`` (e.g. "circuits") of a model whose rows were computed by an
    older format (``version``, its ``models.format_version``), or None for a current one."""
    if version is not None and version >= CONTENTS_VERSION:
        return None
    return AtlasError(
        f"model {model_id!r} was atlased by format version {version or 1} (an earlier "
        f"svd-atlas), which has no {what}: they need the model's weights",
        hint="re-ingest it (`ingest` with `replace`) for them",
    )
