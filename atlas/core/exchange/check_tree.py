"""``svd-atlas check`` on a Parquet tree: what can be checked read-only.

A tree has no checksums and no index to verify, and nothing here repairs it (it is rewritten by
exporting again). Per model: its partitions are readable, its row counts agree with the
marker and its ``models`` row, ids are unique and contiguous, rows refer to rows that exist,
the unembedding (where the tree keeps one) has the model's shape, and its values are sound
(``atlas.core.value_checks``, every vector included).
"""

from __future__ import annotations

from atlas.core.check import CheckReport, Finding
from atlas.core.errors import AtlasError, one_line
from atlas.core.exchange.parquet_reader import ParquetReader

REEXPORT = "export the model into the tree again (`export` with `parquet`)"


def check_tree(location: str) -> CheckReport:
    """Every model of the tree at ``location``; see the module notes."""
    reader = ParquetReader(location, validate=False)
    try:
        report = CheckReport(root=location, models=len(reader.model_ids()))
        for model_id in reader.model_ids():
            try:
                problems = _model_problems(reader, model_id)
            except AtlasError as exc:
                problems = [f"cannot be read: {one_line(exc, 200)}"]
            report.directions += int(reader.info["models"][model_id].get("n_directions") or 0)
            report.findings += [Finding("error", model_id, p, REEXPORT) for p in problems]
    finally:
        reader.close()
    return report


def _model_problems(reader: ParquetReader, model_id: str) -> list[str]:
    problems = []
    rel = {t: reader.relation(model_id, t) for t in ("models", "matrices", "directions")}
    (row,) = reader.sql(f"SELECT n_directions, n_matrices FROM {rel['models']}").to_pylist()
    marked = reader.info["models"][model_id].get("n_directions")
    for table, column in (("directions", "direction_id"), ("matrices", "matrix_id")):
        (stats,) = reader.sql(
            f"SELECT count(*) AS n, count(DISTINCT {column}) AS distinct_ids, min({column}) AS lo, "
            f"max({column}) AS hi FROM {rel[table]}"
        ).to_pylist()
        expected = row[f"n_{table}"]
        if stats["n"] != expected or (table == "directions" and marked not in (None, stats["n"])):
            problems.append(
                f"{table} has {stats['n']} rows; models.n_{table} says {expected}"
                + (f", the marker {marked}" if table == "directions" else "")
            )
        if stats["n"] and (stats["distinct_ids"], stats["hi"] - stats["lo"] + 1) != (
            stats["n"],
            stats["n"],
        ):
            problems.append(f"{table}.{column} values are not unique and contiguous")
    refs = (
        ("directions", "matrix_id", "matrices"),
        ("top_tokens", "direction_id", "directions"),
        ("top_neurons", "direction_id", "directions"),
    )
    for table, column, parent in refs:
        (dangling,) = reader.sql(
            f"SELECT count(*) AS n FROM {reader.relation(model_id, table)} "
            f"WHERE {column} NOT IN (SELECT {column} FROM {reader.relation(model_id, parent)})"
        ).to_pylist()
        if dangling["n"]:
            problems.append(f"{dangling['n']} {table} rows name a {column} that is not in {parent}")
    if problems:
        return problems
    return [p.split(": ", 1)[1] for p in reader.value_problems(model_id, vectors="all")]
