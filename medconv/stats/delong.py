"""DeLong's test for two correlated AUROCs (two scores of the same cases), in the fast midrank form of Sun & Xu.

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of AUROCs measured on the same cases from their
structural components (placement values): for a positive case, the fraction of negatives it outscores; for a
negative, the fraction of positives that outscore it (ties one half). Sun & Xu (2014, IEEE Signal Processing
Letters 21(11)) compute those from midranks in O(n log n) instead of comparing every positive with every negative.
The test treats cases as independent: with several images per patient read it beside the paired patient bootstrap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, tied values sharing the mean of their ranks."""
    x = np.asarray(x, dtype=float)
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        _, inverse, counts = np.unique(x[index], return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        out[index] = (ends - (counts - 1) / 2)[inverse]
    return out


def placements(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUROCs (k,), positives' placement values (k, m), negatives' placement values (k, n)) of k score rows."""
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    positive = np.asarray(labels) == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        raise ValueError(f"DeLong needs positives and negatives (got {m} and {n})")
    x, y = scores[:, positive], scores[:, ~positive]
    ranks = midranks(np.concatenate([x, y], axis=1))
    v10 = (ranks[:, :m] - midranks(x)) / n  # per positive: the fraction of negatives below it
    v01 = 1 - (ranks[:, m:] - midranks(y)) / m  # per negative: the fraction of positives above it
    return v10.mean(axis=1), v10, v01


def auroc_covariance(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUROCs (k,), their DeLong covariance (k, k)) for k score rows on the same cases."""
    aucs, v10, v01 = placements(scores, labels)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, s10 / m + s01 / n


@dataclass(frozen=True)
class DeLongResult:
    auroc_a: float
    auroc_b: float
    diff: float  # a - b
    se: float
    ci_low: float
    ci_high: float
    z: float
    p: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, level: float = 0.95) -> DeLongResult:
    """AUROC(a) - AUROC(b) on the same cases: the difference, its normal-approximation interval (kept inside
    [-1, 1]), z and the two-sided p. A zero standard error (identical scores, or placements that do not vary) gives
    z NaN and p 1 when the AUROCs are equal, NaN when not."""
    aucs, cov = auroc_covariance(np.stack([np.asarray(scores_a, float), np.asarray(scores_b, float)]), labels)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    if se > 0:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    else:
        z, p = math.nan, 1.0 if diff == 0 else math.nan
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, max(diff - half, -1.0), min(diff + half, 1.0), z, p)
