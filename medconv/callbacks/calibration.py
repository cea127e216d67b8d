"""Reliability diagram beside the ROC plot: observed fraction positive against mean predicted probability per bin.

Discrimination (AUROC) says whether positives score above negatives; calibration says whether a predicted 0.8
means 80%. The bins are those of the report's `ece` (10 equal-width bins); each point is drawn with its bin's
sample count, and the histogram below shows where the probabilities fall.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medconv.io.atomic import atomic_path
from medconv.stats.calibration import brier_score, calibration_target, expected_calibration_error, reliability


def plot_reliability(rows: dict, out_png: Path, title: str = "Reliability", n_bins: int = 10) -> Path | None:
    """The image-level reliability diagram (positive class; top label for more classes). None without rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs, labels = np.asarray(rows.get("probs", np.zeros((0, 0)))), np.asarray(rows.get("labels", []))
    if probs.ndim != 2 or probs.shape[1] < 2 or len(labels) == 0:
        return None
    p, y = calibration_target(probs, labels)
    table = reliability(p, y, n_bins)
    filled = table["count"] > 0
    ece, brier = expected_calibration_error(p, y, n_bins), brier_score(p, y)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    ax.plot(table["mean_prob"][filled], table["observed"][filled], "o-", color="C0",
            label=f"model (ECE {ece:.3f}, Brier {brier:.3f}, n={len(p)})")
    for x, o, c in zip(table["mean_prob"][filled], table["observed"][filled], table["count"][filled], strict=True):
        ax.annotate(str(int(c)), (x, o), textcoords="offset points", xytext=(4, -10), fontsize=7, color="C0")
    what = "positive class" if probs.shape[1] == 2 else "top label"
    ax.set(ylabel="observed fraction positive" if probs.shape[1] == 2 else "observed accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"{title} ({what}, {n_bins} equal-width bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.hist(p, bins=np.linspace(0, 1, n_bins + 1), color="C0", alpha=0.6)
    hist.set(xlabel="predicted probability", ylabel="images")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out_png
