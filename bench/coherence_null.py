"""Figures of the coherence percentile (docs/coherence.md): random lists, examples, labels.

    python bench/coherence_null.py [--labels ../shared/data/autolabels]

Prints the mean percentile and a Kolmogorov-Smirnov test against uniform of 200 random lists
of the bundled MiniLM's vocabulary (seed 2024, not the null's), the score and percentile of a
few example lists, and, where GPT-3's labels are, the median percentile of gpt2-large's lists
that GPT-3 named a theme for and of those it did not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

EXAMPLES = [
    "fire, flame, smoke, burning, blaze, heat",
    "one, two, three, four, five, six",
    "dog, cat, horse, cow, sheep, pig",
    "table, democracy, purple, swim, guitar, seven",
    "car, banana, justice, river, pencil, cloud",
    "ories, acked, oses, icles, ure, ove",
]


def main() -> None:
    from scipy.stats import kstest

    import atlas
    from atlas.core.tokens import display_vocabulary
    from atlas.models.bundled import minilm_words
    from atlas.models.coherence import clean
    from bench.coherence_auc import LABELS, load_labels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=LABELS)
    args = parser.parse_args()

    vocabulary = [t for t in display_vocabulary(minilm_words()) if clean(t)]
    rng = np.random.default_rng(2024)
    for length in (6, 15):
        lists = [
            [vocabulary[i] for i in rng.choice(len(vocabulary), length, replace=False)]
            for _ in range(200)
        ]
        results = atlas.coherence(*lists)
        pct = np.array([r.coherence_pct for r in results])
        raw = np.array([r.coherence for r in results])
        print(
            f"200 random lists of {length:2d}: percentile mean {pct.mean():.1f}, "
            f"deciles {np.percentile(pct, [10, 50, 90]).round(1).tolist()}, "
            f"KS p vs uniform {kstest(pct / 100, 'uniform').pvalue:.2f}; "
            f"raw score mean {raw.mean():.3f}"
        )
    for r in atlas.coherence(*EXAMPLES):
        tokens = ", ".join(r.tokens)
        print(f"percentile {r.coherence_pct:5.1f}  P(theme) {r.coherence:.4f}  {tokens}")
    if args.labels.is_dir():
        lists, labels = load_labels(args.labels, "large")
        pct = np.array([r.coherence_pct for r in atlas.coherence(*lists)])
        for label, name in ((1, "named a theme"), (0, "no shared meaning")):
            chosen = pct[labels == label]
            print(
                f"gpt2-large, GPT-3 {name}: {len(chosen)} lists, median percentile "
                f"{np.median(chosen):.1f}, {100 * (chosen > 95).mean():.0f}% above 95"
            )


if __name__ == "__main__":
    main()
