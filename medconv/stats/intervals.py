"""Intervals of a mean over a few replicates (seeds) that stay inside the metric's range.

Student's t interval over three to five seeds is the honest width for so few replicates, but it is symmetric, so
near AUROC 1 it reaches past 1 (0.95 +/- 0.12 reports 1.07). It is cut to the range instead: the true mean lies in
the range, so the cut interval covers it exactly as often as the uncut one, and the bound reads "up to 1". The
alternatives were worse here: a percentile bootstrap over three seeds cannot be wider than the seeds' own spread,
and a logit-transformed t interval is undefined at AUROC 1.0 (a common seed value on a small test set) and its
width then depends on an arbitrary clamp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

UNIT = (0.0, 1.0)  # AUROC, AUPRC, sensitivity, balanced accuracy, ECE, Brier
DIFFERENCE = (-1.0, 1.0)  # a difference of two such metrics


def t_interval(values: Sequence[float], level: float = 0.95, bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean of the non-NaN values, cut to `bounds` when given
    (NaN bounds for fewer than two values)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high
