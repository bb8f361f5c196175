"""The naive pipeline the atlas replaces, as the sprint notebook would run it.

Per head and per layer through TransformerLens's ``SVDInterpreter`` (one SVD at a time, right
vectors only, a full-vocabulary projection each), a top-k per vector, and one INSERT per row.
It does less than an ingest (no read-side vectors, no neurons, no indexes, no sign rule): the
ratio against it understates the atlas's advantage.
"""

from __future__ import annotations

import time
from typing import Any

import duckdb
import torch


@torch.no_grad()
def naive_ingest(bridge: Any, vocabulary: list[str], db_path: str, k: int = 20) -> dict[str, float]:
    from transformer_lens.SVDInterpreter import SVDInterpreter

    cfg = bridge.cfg
    interpreter = SVDInterpreter(bridge)
    con = duckdb.connect(db_path)
    con.execute(
        "CREATE TABLE top_tokens (layer INT, head INT, kind VARCHAR, sv INT, "
        "polarity VARCHAR, rank INT, token VARCHAR, score FLOAT)"
    )
    timings = {"svd_and_projection": 0.0, "topk": 0.0, "inserts": 0.0}
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
        for sv in range(projections.shape[1]):
            start = time.perf_counter()
            column = projections[:, sv]
            top, bottom = torch.topk(column, k), torch.topk(column, k, largest=False)
            timings["topk"] += time.perf_counter() - start
            start = time.perf_counter()
            for polarity, result in (("pos", top), ("neg", bottom)):
                for rank, (score, token) in enumerate(
                    zip(result.values.tolist(), result.indices.tolist(), strict=True)
                ):
                    con.execute(
                        "INSERT INTO top_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [layer, head, vector_type, sv, polarity, rank, vocabulary[token], score],
                    )
            timings["inserts"] += time.perf_counter() - start
    con.close()
    return timings
