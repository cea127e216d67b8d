"""ROC curves per sample and per group, grouped exactly as the metrics are (`aggregate_groups`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc

from medconv.io.atomic import atomic_path
from medconv.tasks.metrics import aggregate_groups


def plot_roc(rows: dict, out_png: Path, groups: dict[str, list[str]] | None = None, reduce: str = "max",
             title: str = "ROC") -> Path | None:
    """Binary tasks only; each curve's AUROC and n in the legend. None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs, labels = np.asarray(rows.get("probs", np.zeros((0, 0)))), np.asarray(rows.get("labels", []))
    if probs.ndim != 2 or probs.shape[1] != 2 or len(np.unique(labels)) < 2:
        return None
    curves = {"image": (probs, labels)}
    for name, columns in (groups or {}).items():
        if all(c in rows for c in columns):
            _, g_probs, g_labels = aggregate_groups(list(zip(*(rows[c] for c in columns), strict=True)), probs, labels, reduce)
            curves[f"{name} ({reduce})"] = (g_probs, g_labels)
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (p, y) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        scores, target = torch.tensor(p[:, 1], dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        fpr, tpr, _ = binary_roc(scores, target)
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{name} (AUROC {float(binary_auroc(scores, target)):.3f}, n={len(y)})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out_png
