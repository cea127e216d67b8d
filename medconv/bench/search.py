"""The largest batch that fits: pure search over a monotone `fits(n)`, each call one costly trial."""

from __future__ import annotations

import math
from collections.abc import Callable

Fits = Callable[[int], bool]


def bisect_largest(fits: Fits, good: int, bad: int | None) -> int:
    """The largest n in [good, bad) with fits(n), given fits(good) and not fits(bad) (None: good is the answer)."""
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def predict_max_batch(peak_1: float, peak_2: float, capacity: float, limit: int = 4096) -> int | None:
    """Batch size that fills `capacity`, from peak memory at batch 1 and 2 (same unit); None if unusable.

    Peak memory is a fixed part (weights, optimizer state, workspaces) plus a per-image part.
    """
    per_image = peak_2 - peak_1
    if not per_image > 0 or not math.isfinite(capacity) or not capacity > peak_2:
        return None
    fixed = peak_1 - per_image
    return max(1, min(limit, int((capacity - fixed) // per_image)))


def candidates(predicted: int | None, limit: int) -> list[int]:
    """Rising batch sizes to try after batch 1 and 2: 90-105 % of the prediction, or doubling from 4 without one.

    The climb stops at the first failure, so the likely fits come first and each costs one training step.
    """
    if predicted is None:
        sizes = [4]
        while sizes[-1] < limit:
            sizes.append(sizes[-1] * 2)
    else:
        sizes = [int(predicted * f) for f in (0.9, 0.95, 1.0, 1.05)]
    return sorted({min(s, limit) for s in sizes if min(s, limit) > 2})


def climb(trial: Callable[[int], dict], capacity: float, limit: int) -> list[dict]:
    """Rows of `trial(batch)`: batch 1 and 2, the candidates near the predicted largest batch until one is not
    "ok", then bisection between the last that fitted and that one. What `medconv bench gpu` runs in one
    worker process per model: ~8 training steps instead of ~8 process starts. A batch tried after an
    out-of-memory error may fail where a fresh process would fit it, so the answer can only err low.
    """
    rows: list[dict] = []

    def fits(batch: int) -> bool:
        rows.append(trial(batch))
        return rows[-1]["status"] == "ok"

    if not (fits(1) and fits(2)):
        return rows
    guess = predict_max_batch(rows[0]["peak_mem_mb"], rows[1]["peak_mem_mb"], capacity, limit)
    good, bad = 2, None
    for batch in candidates(guess, limit):
        if not fits(batch):
            bad = batch
            break
        good = batch
    bisect_largest(fits, good, bad)
    return rows
