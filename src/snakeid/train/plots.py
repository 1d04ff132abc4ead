"""The evaluate stage's figures: the confusion matrix, per-species F1 and the venomous rule's
trade-off, drawn with matplotlib (Agg) from an `Evaluation` and its metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from snakeid.taxa import Species
from snakeid.train.evaluate import Evaluation


def plot_confusion(ev: Evaluation, species: Sequence[Species], path: Path) -> None:
    """Row-normalised confusion matrix; venomous species' labels in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = sorted(set(ev.labels.tolist()) | set(ev.probs.argmax(1).tolist()))
    pos = {c: i for i, c in enumerate(present)}
    cm = np.zeros((len(present), len(present)))
    for t, p in zip(ev.labels, ev.probs.argmax(1), strict=True):
        cm[pos[t], pos[p]] += 1
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    names = [species[c].name for c in present]
    size = max(6.0, 0.45 * len(present) + 3)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for lab in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if species[present[names.index(lab.get_text())]].venomous:
            lab.set_color("firebrick")
    for i in range(len(present)):
        for j in range(len(present)):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}\n({int(cm[i, j])})",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual (row-normalised; venomous species in red)")
    ax.set_title(f"Test confusion matrix (n={len(ev.labels)})")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(curve: list[dict[str, Any]], chosen: dict[str, Any], path: Path) -> None:
    """Harmless photos passed against venomous photos missed, the chosen threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    if not curve:  # every test photo venomous, or every one harmless
        ax.text(0.5, 0.5, "no trade-off: the test photos are all of one kind", ha="center")
        chosen = {**chosen, "venomous_missed": np.nan, "harmless_passed": np.nan}
    ax.step([r["venomous_missed"] for r in curve], [r["harmless_passed"] for r in curve],
            where="post", color="steelblue", label="every threshold")  # fmt: skip
    ax.plot(chosen["venomous_missed"], chosen["harmless_passed"], "o", color="firebrick",
            label=f"chosen: P(venomous) ≥ {chosen['threshold']:.3g}: misses "
            f"{chosen['venomous_missed']:.0%}, passes {chosen['harmless_passed']:.0%}")  # fmt: skip
    ax.set_xlabel("venomous test photos missed (no warning)")
    ax.set_ylabel("harmless test photos passed (no warning)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title('"Possibly venomous" rule on the test photos')
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_species_f1(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = metrics["per_species"]
    names = sorted(per, key=lambda n: per[n]["f1"])
    f1 = [per[n]["f1"] for n in names]
    colors = ["firebrick" if per[n]["venomous"] else "steelblue" for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.barh(range(len(names)), f1, color=colors)
    ax.set_yticks(range(len(names)), [f"{n} (n={per[n]['support']})" for n in names], fontsize=8)
    ax.set_xlim(0, 1)
    ax.axvline(
        metrics["macro_f1"], color="k", ls="--", lw=1, label=f"macro-F1 {metrics['macro_f1']:.2f}"
    )
    ax.set_xlabel("F1 on the test split (red: venomous)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
