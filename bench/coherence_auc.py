"""ROC-AUC of the coherence score against GPT-3's labels of MLP directions (Millidge & Black).

    python bench/coherence_auc.py [--labels ../shared/data/autolabels]

The score's four numbers were fitted on gpt2-small only; gpt2-large is held out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT.parent / "shared" / "data" / "autolabels"
NO_MEANING = "no shared semantic meaning"


def load_labels(folder: Path, model: str) -> tuple[list[list[str]], np.ndarray]:
    """Token lists and labels (1 = GPT-3 named a shared meaning) of one model's files."""
    lists, labels = [], []
    for kind in ("in", "out"):
        data = json.loads((folder / f"{model}_mlp_{kind}_text_outputs.json").read_text())
        for layer in data.values():
            for entry in layer.values():
                lists.append(entry["test_string"].split(", "))
                labels.append(0 if NO_MEANING in entry["response"] else 1)
    return lists, np.array(labels)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def main() -> None:
    from atlas.coherence import Scorer

    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=Path, default=LABELS)
    args = parser.parse_args()
    scorer = Scorer()
    for model, role in (("small", "tuned on"), ("large", "held out")):
        lists, labels = load_labels(args.labels, model)
        scores = scorer.score_lists(lists)
        print(
            f"gpt2-{model:<6} {role:<9} lists={len(lists):>5} "
            f"positive rate={labels.mean():.2f} ROC-AUC={roc_auc(scores, labels):.4f}"
        )


if __name__ == "__main__":
    main()
