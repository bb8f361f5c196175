"""Head composition of a whole model: the atlas's streamed stage against TransformerLens.

    python bench/composition.py [--shape gpt2-medium]

Each route runs in a fresh process on the same random weights (``random:<shape>``, booted
whole through TransformerLens), timed after the boot, with its peak resident memory above the
booted model's:

- ``atlas``: what ingest runs per block: the factored SVDs of every head's OV and QK circuits
  (``ingest.decompose``, MLPs left out), then ``ingest.composition.CompositionStage`` over the
  blocks in order (every score, every mode, and the top direction pairs);
- ``transformer_lens``: ``bridge.all_composition_scores(mode)`` for Q, K and V.

The two results are compared (largest absolute difference) in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak() -> None:
    """Start the peak resident set size (VmHWM) again from the current one (Linux)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_mb() -> float:
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def route(shape: str, which: str, out: Path) -> None:
    import torch

    from atlas.models.loading import load_model

    torch.set_grad_enabled(False)
    bridge = load_model(f"random:{shape}").bridge
    before = rss_mb()
    reset_peak()
    started = time.perf_counter()
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    scores = np.zeros((3, n_layers, n_heads, n_layers, n_heads), np.float32)
    if which == "transformer_lens":
        for m, mode in enumerate("QKV"):
            scores[m] = bridge.all_composition_scores(mode).scores.detach().numpy()
        decompose_s = 0.0
    else:
        from ingest.assemble import IdBase
        from ingest.composition import CompositionStage
        from ingest.decompose import decompose
        from ingest.weights import ModelWeights, expand_kv_heads

        W_Q, W_O = bridge.W_Q.float(), bridge.W_O.float()
        W_K = expand_kv_heads(bridge.W_K, n_heads).float()
        W_V = expand_kv_heads(bridge.W_V, n_heads).float()
        stage = CompositionStage("bench", bridge.cfg.d_model)
        decompose_s = 0.0
        for layer in range(n_layers):
            one = slice(layer, layer + 1)
            weights = ModelWeights(W_Q[one], W_K[one], W_V[one], W_O[one], {}, bridge.W_U)
            t = time.perf_counter()
            groups = decompose(weights, first_layer=layer)
            decompose_s += time.perf_counter() - t
            table, _pairs = stage.add_block(groups, [IdBase(0, 0), IdBase(0, 0)])
            if table is not None:
                m = np.array(["QKV".index(x) for x in table["mode"].to_pylist()])
                scores[m, table["src_layer"].to_numpy(), table["src_head"].to_numpy(),
                       layer, table["dst_head"].to_numpy()] = table["score"].to_numpy()  # fmt: skip
    seconds = time.perf_counter() - started
    np.save(out.with_suffix(".npy"), scores)
    result = {
        "route": which,
        "seconds": round(seconds, 2),
        "svd_seconds": round(decompose_s, 2),
        "extra_peak_mb": round(max(0.0, peak_mb() - before), 0),
        "model_rss_mb": round(before, 0),
    }
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="gpt2-medium")
    parser.add_argument(
        "--routes", default="atlas,transformer_lens", help="comma-separated (default: both)"
    )
    parser.add_argument("--route", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.route:
        route(args.shape, args.route, args.out)
        return
    import tempfile

    results, arrays = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for which in args.routes.split(","):
            out = Path(tmp) / f"{which}.json"
            subprocess.run([sys.executable, __file__, "--shape", args.shape, "--route", which,
                            "--out", str(out)], check=True)  # fmt: skip
            results.append(json.loads(out.read_text()))
            arrays.append(np.load(out.with_suffix(".npy")))
    diff = float(np.abs(arrays[0] - arrays[-1]).max())
    print("| route | shape | time (s) | of it, QK and OV SVDs (s) | peak above model (MB) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['route']} | {args.shape} | {r['seconds']} | {r['svd_seconds']} | "
              f"{r['extra_peak_mb']:.0f} |")  # fmt: skip
    if len(arrays) == 2:
        print(f"\nlargest |atlas - transformer_lens| over all scores: {diff:.2e}")


if __name__ == "__main__":
    main()
