"""`svd-atlas compare` on MiniLM ingested raw and tl, against numpy on the stored rows."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

import atlas
from ingest.job import IngestOptions, ingest
from tests.support.helpers import assert_one_error_line, quiet, run_cli

# slow: ingests MiniLM twice (raw and tl weights) with coherence
pytestmark = pytest.mark.slow

RANK = 8


@pytest.fixture(scope="module")
def raw_and_tl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare") / "atlas"
    for name, processing in (("minilm-raw", "raw"), ("minilm-tl", "tl")):
        options = IngestOptions(
            model="minilm",
            model_id=name,
            processing=processing,
            max_rank=RANK,
            device="cpu",
            coherence=True,
        )
        ingest(root, options, log=quiet)
    return root


def _stored(root: Path, model_id: str) -> dict[tuple[str, int, int], list[dict]]:
    """Judged directions per matrix, sv_index order, with top-20 token id sets."""
    with atlas.open(root) as a:
        rows = a.sql(
            """
            SELECT d.kind, d.layer, coalesce(d.head, -1) AS head, d.sv_index, d.sigma, d.vector,
                   d.coherence, m.coherence AS head_coherence,
                   list(t.token_id) FILTER (WHERE t.polarity = 'pos') AS pos,
                   list(t.token_id) FILTER (WHERE t.polarity = 'neg') AS neg
            FROM directions d JOIN matrices m USING (matrix_id)
                 JOIN top_tokens t USING (direction_id)
            WHERE d.model_id = ?
              AND d.side = CASE WHEN d.kind IN ('ov', 'mlp_out') THEN 'write'
                                WHEN d.kind = 'qk' THEN 'key' ELSE 'read' END
            GROUP BY ALL ORDER BY d.kind, d.layer, head, d.sv_index
            """,
            [model_id],
        ).to_pylist()
    out: dict[tuple[str, int, int], list[dict]] = {}
    for r in rows:
        out.setdefault((r["kind"], r["layer"], r["head"]), []).append(r)
    return out


def _overlap(x: dict, y: dict) -> float:
    same = len(set(x["pos"]) & set(y["pos"])) + len(set(x["neg"]) & set(y["neg"]))
    flip = len(set(x["pos"]) & set(y["neg"])) + len(set(x["neg"]) & set(y["pos"]))
    return max(same, flip) / 40


def test_compare_raw_and_tl_matches_numpy_on_the_stored_rows(raw_and_tl: Path) -> None:
    result = run_cli(
        "--atlas", raw_and_tl, "compare", "minilm-raw", "minilm-tl", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    per_matrix = {
        (r["kind"], r["layer"], -1 if r["head"] is None else r["head"]): r
        for r in rows
        if r["scope"] == "matrix"
    }
    A, B = _stored(raw_and_tl, "minilm-raw"), _stored(raw_and_tl, "minilm-tl")
    assert set(per_matrix) == set(A) == set(B) and len(A) == 72 + 72 + 12  # ov, qk, mlp
    for key, got in per_matrix.items():
        a, b = A[key], B[key]
        sa, sb = np.array([r["sigma"] for r in a]), np.array([r["sigma"] for r in b])
        va, vb = np.array([r["vector"] for r in a]), np.array([r["vector"] for r in b])
        cos = np.abs(va @ vb.T)
        best = cos.argmax(axis=1)
        want = {
            "sigma_change": np.mean(np.abs(sb - sa) / sa),
            "spectrum_corr": np.corrcoef(sa, sb)[0, 1],
            "overlap_index": np.mean([_overlap(a[i], b[i]) for i in range(RANK)]),
            "overlap_match": np.mean([_overlap(a[i], b[j]) for i, j in enumerate(best)]),
            "match_cos": cos.max(axis=1).mean(),
            "reordered": np.mean(best != np.arange(RANK)),
            "coherence_diff": b[0]["head_coherence"] - a[0]["head_coherence"],
            "dir_coherence_diff": np.mean(
                [y["coherence"] - x["coherence"] for x, y in zip(a, b, strict=True)]
            ),
        }
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9), (key, name)
        assert got["match_cos"] <= 1.0  # mlp_in is the same in both: cosines of 1, not more

    aggregate = {r["kind"]: r for r in rows if r["scope"] == "aggregate"}
    assert aggregate["all"]["n"] == 156 and aggregate["ov"]["n"] == aggregate["qk"]["n"] == 72
    for name in ("sigma_change", "overlap_index", "coherence_diff"):
        ov = [r[name] for k, r in per_matrix.items() if k[0] == "ov"]
        assert aggregate["ov"][name] == pytest.approx(np.mean(ov), rel=1e-9)
    # tl centres the writing weights: W_in (mlp_in reads) is untouched, W_O and W_out change
    assert aggregate["mlp_in"]["sigma_change"] == pytest.approx(0, abs=1e-6)
    assert aggregate["ov"]["sigma_change"] > 1e-5


def test_compare_csv_table_and_errors(raw_and_tl: Path) -> None:
    table = run_cli("--atlas", raw_and_tl, "compare", "minilm-raw", "minilm-tl", "--aggregate")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:6] == ["scope", "layer", "head", "kind", "n", "sigma_change"]
    assert [line.split()[1] for line in lines[1:]] == ["ov", "qk", "mlp_in", "mlp_out", "all"]
    out = run_cli("--atlas", raw_and_tl, "compare", "minilm-raw", "minilm-tl", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(parsed) == 156 + 5
    error = assert_one_error_line(run_cli("--atlas", raw_and_tl, "compare", "minilm-raw", "nope"))
    assert "nope" in error
