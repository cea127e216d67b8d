"""Calibration: do predicted probabilities match observed frequencies? Expected calibration error and Brier score.

ECE bins the predicted probability of the positive class, and averages |observed fraction positive - mean
predicted probability| over bins, weighted by their share of samples. `uniform` bins are 10 equal-width intervals
[0, 0.1), ..., [0.9, 1.0] (the last one closed, so p = 1 joins it; otherwise torchmetrics' BinaryCalibrationError
with norm l1); `quantile` bins hold equal numbers of samples (adaptive ECE, Nixon et al. 2019), which keeps bins
populated when a model's probabilities crowd near 0 or 1. The Brier score is the mean squared error of the
probabilities. Multi-class sets use the top-label probability and whether it was right (Guo et al. 2017).
"""

from __future__ import annotations

import numpy as np

STRATEGIES = ("uniform", "quantile")


def bin_index(probs: np.ndarray, n_bins: int = 10, strategy: str = "uniform") -> np.ndarray:
    """The bin (0..n_bins-1) of each probability."""
    probs = np.asarray(probs, dtype=float)
    if strategy == "uniform":
        edges = np.linspace(0, 1, n_bins + 1)  # the edges torchmetrics bins against, so boundary values agree
        return np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, n_bins - 1)
    if strategy == "quantile":
        order = np.argsort(probs, kind="stable")
        index = np.empty(len(probs), dtype=np.int64)
        for b, members in enumerate(np.array_split(order, n_bins)):
            index[members] = b
        return index
    raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")


def reliability(probs: np.ndarray, outcomes: np.ndarray, n_bins: int = 10, strategy: str = "uniform") -> dict[str, np.ndarray]:
    """Per bin: count, mean predicted probability and observed fraction of positive outcomes (NaN when empty)."""
    probs, outcomes = np.asarray(probs, dtype=float), np.asarray(outcomes, dtype=float)
    index = bin_index(probs, n_bins, strategy)
    count = np.bincount(index, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(index, probs, minlength=n_bins) / count
        observed = np.bincount(index, outcomes, minlength=n_bins) / count
    return {"count": count, "mean_prob": mean_prob, "observed": observed}


def expected_calibration_error(probs: np.ndarray, outcomes: np.ndarray, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Sum over bins of (bin share of samples) x |observed fraction - mean probability|; NaN for no samples."""
    table = reliability(probs, outcomes, n_bins, strategy)
    if table["count"].sum() == 0:
        return float("nan")
    filled = table["count"] > 0
    gap = np.abs(table["observed"][filled] - table["mean_prob"][filled])
    return float((table["count"][filled] * gap).sum() / table["count"].sum())


def brier_score(probs: np.ndarray, outcomes: np.ndarray) -> float:
    """Mean of (probability - outcome)^2; 0 is perfect, 0.25 is a constant 0.5."""
    probs, outcomes = np.asarray(probs, dtype=float), np.asarray(outcomes, dtype=float)
    return float(np.mean((probs - outcomes) ** 2)) if len(probs) else float("nan")


def calibration_target(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probability, outcome) pairs that calibration is measured on: the positive class for two classes; the
    top-label probability and whether it was right for more."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    if probs.shape[1] == 2:
        return probs[:, 1], (labels == 1).astype(float)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """`ece` (equal-width bins), `ece_adaptive` (equal-mass bins) and `brier` of (n, C) probabilities."""
    p, y = calibration_target(probs, labels)
    return {"ece": expected_calibration_error(p, y, n_bins), "ece_adaptive": expected_calibration_error(p, y, n_bins, "quantile"),
            "brier": brier_score(p, y)}
