"""The naive pipeline the atlas replaces, as a researcher would write it with TransformerLens.

Per head and per layer through TransformerLens's ``SVDInterpreter`` (one ``FactoredMatrix`` SVD
at a time, right vectors only, a full-vocabulary projection each), a top-k per vector, and the
rows written either one ``INSERT`` at a time (the sprint notebook) or in one bulk insert from
Arrow (what a careful researcher would do). It does about half of an ingest's work (the write
side only, top tokens only: no read-side vectors, neurons, sign rule, gaps or indexes).

    python bench/naive.py minilm OUT.duckdb [--row-by-row]    # a whole process, boot included
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import torch

COLUMNS = ("layer", "head", "kind", "sv", "polarity", "rank", "token", "score")


@torch.no_grad()
def naive_ingest(
    bridge: Any, vocabulary: list[str], db_path: str, k: int = 20, row_by_row: bool = False
) -> dict[str, float]:
    """Seconds spent in each part: SVD and projection, top-k, writing."""
    from transformer_lens import SVDInterpreter

    cfg = bridge.cfg
    interpreter = SVDInterpreter(bridge)
    con = duckdb.connect(db_path)
    con.execute(
        "CREATE TABLE top_tokens (layer INT, head INT, kind VARCHAR, sv INT, "
        "polarity VARCHAR, rank INT, token VARCHAR, score FLOAT)"
    )
    timings = {"svd_and_projection": 0.0, "topk": 0.0, "write": 0.0}
    rows: list[tuple[Any, ...]] = []
    jobs: list[tuple[str, int, int | None, int]] = [
        ("OV", layer, head, cfg.d_head)
        for layer in range(cfg.n_layers)
        for head in range(cfg.n_heads)
    ] + [("w_out", layer, None, cfg.d_model) for layer in range(cfg.n_layers)]
    for vector_type, layer, head, n in jobs:
        start = time.perf_counter()
        projections = interpreter.get_singular_vectors(
            vector_type,
            layer_index=layer,
            num_vectors=n,
            head_index=head,  # type: ignore[arg-type]
        )[:, 0, :]
        timings["svd_and_projection"] += time.perf_counter() - start
        start = time.perf_counter()
        top = torch.topk(projections, k, dim=0)
        bottom = torch.topk(projections, k, dim=0, largest=False)
        timings["topk"] += time.perf_counter() - start
        start = time.perf_counter()
        for sv in range(projections.shape[1]):
            for polarity, result in (("pos", top), ("neg", bottom)):
                for rank in range(k):
                    token = int(result.indices[rank, sv])
                    row = (layer, head, vector_type, sv, polarity, rank, vocabulary[token],
                           float(result.values[rank, sv]))  # fmt: skip
                    if row_by_row:
                        con.execute("INSERT INTO top_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                    else:
                        rows.append(row)
        timings["write"] += time.perf_counter() - start
    start = time.perf_counter()
    if rows:
        con.register("incoming", pa.table({c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)}))
        con.execute("INSERT INTO top_tokens SELECT * FROM incoming")
    con.close()
    timings["write"] += time.perf_counter() - start
    return timings


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from atlas.models.loading import load_model

    loaded = load_model(sys.argv[1], "cpu")
    naive_ingest(
        loaded.bridge, loaded.vocabulary, sys.argv[2], row_by_row="--row-by-row" in sys.argv
    )
