"""ROC-AUC of the coherence score against GPT-3's labels of MLP directions (Millidge & Black).

    python bench/coherence_auc.py [--labels ../shared/data/autolabels] [--fit] [--check]

The score's five numbers were fitted on gpt2-small only; gpt2-large is held out. ``--fit``
refits them on gpt2-small (what ``atlas.models.coherence.WEIGHTS`` and ``BIAS`` hold,
rounded), prints the 5-fold cross-validated ROC-AUC on gpt2-small of each feature set
compared, and the ROC-AUC on gpt2-small of the same features fitted on gpt2-large.
``--check`` exits 1 when the held-out ROC-AUC is below ``HELD_OUT_AUC``
(tests/integration/test_coherence.py runs the same check whenever the labels are present, as
in CI).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT.parent / "shared" / "data" / "autolabels"
NO_MEANING = "no shared semantic meaning"
# The target on gpt2-large, which the score was not tuned on (it reaches 0.810; see the docs).
HELD_OUT_AUC = 0.80


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


def held_out_auc(scorer: Any, folder: Path = LABELS) -> tuple[float, int, float]:
    """ROC-AUC of the score on gpt2-large's labelled lists, their number and positive rate."""
    lists, labels = load_labels(folder, "large")
    return roc_auc(scorer.score_lists(lists), labels), len(lists), float(labels.mean())


def fit(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression on standardized features (C=1), folded back to raw feature units."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=1.0).fit(scaler.transform(features), labels)
    weights = model.coef_[0] / scaler.scale_
    bias = model.intercept_[0] - float((model.coef_[0] * scaler.mean_ / scaler.scale_).sum())
    return weights, float(bias)


def cross_validated_auc(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean held-out-fold ROC-AUC over 4 repeats of stratified 5-fold cross-validation."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    folds = RepeatedStratifiedKFold(n_splits=5, n_repeats=4, random_state=0)
    aucs = []
    for train, test in folds.split(features, labels):
        weights, bias = fit(features[train], labels[train])
        aucs.append(roc_auc(features[test] @ weights + bias, labels[test]))
    return float(np.mean(aucs))


def main() -> None:
    from atlas.models.coherence import FEATURES, Scorer, score_features

    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--fit", action="store_true", help="refit the weights on gpt2-small")
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {HELD_OUT_AUC}")
    args = parser.parse_args()
    scorer = Scorer()
    if args.check:
        auc, n, _ = held_out_auc(scorer, args.labels)
        print(f"held-out gpt2-large ROC-AUC {auc:.4f} on {n} lists (target {HELD_OUT_AUC})")
        raise SystemExit(0 if auc >= HELD_OUT_AUC else 1)
    data = {}
    for model, role in (("small", "tuned on"), ("large", "held out")):
        lists, labels = load_labels(args.labels, model)
        features = scorer.features(lists)
        data[model] = features, labels
        print(
            f"gpt2-{model:<6} {role:<9} lists={len(lists):>5} positive rate={labels.mean():.2f} "
            f"ROC-AUC={roc_auc(score_features(features), labels):.4f}"
        )
        if args.fit and model == "small":
            weights, bias = fit(features, labels)
            print(
                f"  fitted: bias {bias:.4g}, "
                + ", ".join(f"{name} {w:.4g}" for name, w in zip(FEATURES, weights, strict=True))
            )
            for n in range(1, len(FEATURES) + 1):
                cv = cross_validated_auc(features[:, :n], labels)
                print(f"  5-fold CV ROC-AUC with {', '.join(FEATURES[:n])}: {cv:.4f}")
    if args.fit:  # the same features fitted the other way round
        weights, bias = fit(*data["large"])
        features, labels = data["small"]
        reverse = roc_auc(features @ weights + bias, labels)
        print(f"fitted on gpt2-large, ROC-AUC on gpt2-small: {reverse:.4f}")


if __name__ == "__main__":
    main()
