"""Seeded comparisons as a table: mean and 95% interval per arm, and the paired difference between two arms.

Records are one row per finished run (its arm's columns, `seed`, and metric values). Seeds are the unit of
replication: the interval of a mean is Student's t over seeds, cut to the metric's range [0, 1] (differences:
[-1, 1]; medconv.stats.intervals says why a cut and not a transform), and two arms are compared on the runs they
share (same seed and same other columns), so a seed that is easy for both does not widen the difference's
interval. Paired differences get a percentile bootstrap over the pairs (fixed RNG seed) beside the t interval,
since with three to five seeds neither is exact and the bootstrap makes no normality assumption.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medconv.stats.intervals import DIFFERENCE, UNIT, t_interval


def mean_ci(values: Sequence[float], level: float = 0.95, bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(mean, low, high); the interval is Student's t over the values (nan for fewer than two), cut to `bounds`."""
    return t_interval(values, level, bounds)


def summarise(records: pd.DataFrame, by: list[str], metric: str, level: float = 0.95,
              bounds: tuple[float, float] | None = UNIT) -> pd.DataFrame:
    """One row per arm (`by` columns): n seeds, mean, CI low/high (inside `bounds`), and the seeds' values."""
    rows = []
    for arm, group in records.groupby(by, sort=True, dropna=False):
        mean, low, high = mean_ci(group[metric].tolist(), level, bounds)
        arm = arm if isinstance(arm, tuple) else (arm,)
        values = " ".join(f"{v:.3f}" for v in group.sort_values("seed")[metric])
        rows.append(dict(zip(by, arm, strict=True), n=len(group), mean=mean, ci_low=low, ci_high=high, values=values))
    return pd.DataFrame(rows)


def paired_difference(records: pd.DataFrame, by: list[str], arm: str, treated: str, control: str, metric: str,
                      level: float = 0.95) -> pd.DataFrame:
    """`treated - control` on `metric` for runs matched on `by` + seed, with a t interval over the pairs and the
    count of pairs where the treated arm is better."""
    keys = [*by, "seed"]
    left = records[records[arm] == treated].set_index(keys)[metric]
    right = records[records[arm] == control].set_index(keys)[metric]
    pairs = pd.concat({"treated": left, "control": right}, axis=1).dropna().reset_index()
    rows = []
    for group_key, group in pairs.groupby(by, sort=True):
        diff = (group["treated"] - group["control"]).tolist()
        mean, low, high = mean_ci(diff, level, DIFFERENCE)
        group_key = group_key if isinstance(group_key, tuple) else (group_key,)
        rows.append(dict(zip(by, group_key, strict=True), pairs=len(diff), diff=mean, ci_low=low, ci_high=high,
                         wins=int(sum(d > 0 for d in diff))))
    return pd.DataFrame(rows)


def paired_bootstrap(treated: Sequence[float], control: Sequence[float], n_boot: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean difference, low, high): percentile bootstrap over the pairs (resampled together, so what a seed does to
    both arms cancels). A fixed seed makes the interval reproducible; a constant difference gives a zero-width one."""
    diff = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    if diff.shape != (len(treated),) or len(diff) == 0:
        raise ValueError(f"paired_bootstrap needs equally long, non-empty sequences (got {len(treated)} and {len(control)})")
    mean = float(diff.mean())
    if len(diff) < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return mean, float(min(low, mean)), float(max(high, mean))


def paired_comparison(records: pd.DataFrame, by: list[str], arm: str, treated: str, control: str, metric: str,
                      pair_on: Sequence[str] = ("seed",), level: float = 0.95, n_boot: int = 10_000) -> pd.DataFrame:
    """`treated - control` per group of `by`, on runs matched by `pair_on` (seed: the same label subset and split),
    with the paired bootstrap interval, the t interval, and the number of pairs the treated arm wins."""
    keys = [*by, *pair_on]
    left = records[records[arm] == treated].groupby(keys)[metric].mean()
    right = records[records[arm] == control].groupby(keys)[metric].mean()
    pairs = pd.concat({"treated": left, "control": right}, axis=1).dropna().reset_index()
    rows = []
    for group_key, group in pairs.groupby(by, sort=True):
        diff, low, high = paired_bootstrap(group["treated"].tolist(), group["control"].tolist(), n_boot, level)
        _, t_low, t_high = mean_ci((group["treated"] - group["control"]).tolist(), level, DIFFERENCE)
        group_key = group_key if isinstance(group_key, tuple) else (group_key,)
        rows.append(dict(zip(by, group_key, strict=True), treated=treated, control=control, pairs=len(group), diff=diff,
                         ci_low=low, ci_high=high, t_low=t_low, t_high=t_high,
                         wins=int((group["treated"] > group["control"]).sum())))
    columns = [*by, "treated", "control", "pairs", "diff", "ci_low", "ci_high", "t_low", "t_high", "wins"]
    return pd.DataFrame(rows, columns=columns)


def read_test_metrics(path: str | Path, metric: str = "auroc") -> dict[str, float]:
    """`metric` and its bootstrap interval from a `test_metrics.json` that `medconv test` wrote."""
    report = json.loads(Path(path).read_text())["metrics"]
    return {metric: report.get(metric, math.nan), f"{metric}_ci_low": report.get(f"{metric}_ci_low", math.nan),
            f"{metric}_ci_high": report.get(f"{metric}_ci_high", math.nan), "n_test": report.get("n", math.nan)}


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub table without the `tabulate` dependency that pandas' own to_markdown needs."""
    def cell(v: object) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
