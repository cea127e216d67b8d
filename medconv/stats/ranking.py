"""AUROC and average precision of one score vector under many row weightings at once.

A bootstrap resample is a vector of integer row weights (how often each row was drawn), so a (B, n) weight matrix
scores B resamples in one pass: the rows are sorted once, tied scores are merged, and each resample only sums its
weights. With every weight 1 these are the usual AUROC (a tie counts one half) and the step-wise average precision
that torchmetrics and sklearn compute; integer weights give exactly the metric of the rows repeated that often.
A resample without a positive or without a negative scores NaN.
"""

from __future__ import annotations

import numpy as np


def _as_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    w = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=float)
    w = np.atleast_2d(w)
    if w.shape[1] != n:
        raise ValueError(f"weights have {w.shape[1]} columns for {n} scores")
    return w


def tied_sums(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None,
              descending: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(positive weight, negative weight), each (B, U): per resample, summed over the rows of each of the U
    distinct scores, in ascending (or descending) score order."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    w = _as_weights(weights, len(scores))
    order = np.argsort(scores, kind="stable")
    if descending:
        order = order[::-1]
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w, p = w[:, order], positive[order]
    return np.add.reduceat(w * p, starts, axis=1), np.add.reduceat(w * ~p, starts, axis=1)


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(B,) AUROC per row of `weights` (None: one row of ones): P(score of a positive > score of a negative),
    ties counted one half, each row weighted."""
    pos, neg = tied_sums(scores, positive, weights)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def weighted_average_precision(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(B,) average precision per row of `weights`: the sum over thresholds (distinct scores, high to low) of the
    recall gained times the precision there."""
    pos, neg = tied_sums(scores, positive, weights, descending=True)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (pos * precision).sum(1) / pos.sum(1)
    return np.where(neg.sum(1) > 0, ap, np.nan)


def macro(metric, probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:  # noqa: ANN001
    """(B,) the metric of a (n, C) probability matrix: column 1 for two classes, else the mean of one-vs-rest
    metrics over the classes (torchmetrics' `average="macro"`), leaving out a class without positives (undefined)."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    if probs.shape[1] == 2:
        return metric(probs[:, 1], labels == 1, weights)
    per_class = np.array([metric(probs[:, c], labels == c, weights) for c in range(probs.shape[1])])
    defined = np.isfinite(per_class)
    with np.errstate(invalid="ignore"):
        return np.where(defined, per_class, 0).sum(0) / defined.sum(0)
