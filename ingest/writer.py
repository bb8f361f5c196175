"""Writing one model's store as its blocks arrive (ingest's write side).

Each block's rows go into DuckDB through Arrow and its directions into an index shard of their
own, so the write side holds one block at a time too. ``finish`` adds what only the end knows:
the ``models`` row (with the final timings), the coherence null, the token-space bags, the
unembedding and the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from atlas.core.store import IndexShards, TableWriter, write_manifest, write_unembedding
from ingest.assemble import AtlasRows

JSON_COLUMNS = ("processing_applied", "skipped", "versions", "stage_seconds")
WRITER_MEMORY = "256MB"


class StoreBuilder:
    """A staging store filled block by block (see the module notes)."""

    def __init__(
        self, staging: Path, d_model: int, index_type: str, vocab: pa.Table, threads: int | None
    ):
        self.staging, self.index_type = staging, index_type
        # DuckDB keeps written pages cached up to its memory limit: a small one keeps an
        # ingest's memory flat, whatever the number of blocks written
        self.tables = TableWriter(staging, d_model, memory_limit=WRITER_MEMORY, threads=threads)
        self.tables.append({"vocab": vocab})
        self.shards = IndexShards(staging, index_type)

    def add_block(self, rows: AtlasRows) -> None:
        self.tables.append(
            {
                "matrices": rows.matrices,
                "directions": rows.directions,
                "top_tokens": rows.top_tokens,
                "top_neurons": rows.top_neurons,
                "composition": rows.composition,
                "composition_pairs": rows.composition_pairs,
            }
        )
        order = np.argsort(rows.direction_ids, kind="stable")
        self.shards.add_layer(rows.vectors[order], rows.direction_ids[order])

    def finish(
        self,
        model_row: dict[str, Any],
        coherence_null: pa.Table | None,
        W_U_centered: np.ndarray,
        record: dict[str, Any],
    ) -> None:
        self.shards.flush()
        self.tables.append({"models": models_table(model_row), "coherence_null": coherence_null})
        self.tables.finish()
        write_unembedding(self.staging, W_U_centered)
        write_manifest(self.staging, record)

    def close(self) -> None:
        self.tables.close()


def models_table(row: dict[str, Any]) -> pa.Table:
    encoded = {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in row.items()}
    return pa.table({k: [v] for k, v in encoded.items()})
