"""The patient (cluster) bootstrap: draw patients with replacement and take all their rows.

Images of one patient are correlated (views of the same breasts, tiles of one slide), so resampling images treats
n correlated rows as n independent ones and gives intervals that are too narrow. Here clusters (patients; slides,
or single images when no patient id is known) are drawn with replacement within strata, the cluster's highest
label, so every resample keeps the number of positive and of negative patients and both classes are present. A
resample is a vector of row weights (how often each row's cluster was drawn); statistics take a (B, n) weight
matrix, so a thousand resamples are one vectorised pass. A resample where a statistic is undefined (a class
missing: possible when no cluster's rows are all negative) is redrawn, and how many were is reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: statistic(weights (B, n)) -> {name: (B,) values}
Statistic = Callable[[np.ndarray], dict[str, np.ndarray]]
CHUNK_CELLS = 4_000_000  # weight-matrix cells per pass (32 MB of float64): tile sets of 10^5 rows stay small
MAX_ROUNDS = 20


@dataclass(frozen=True)
class Clusters:
    """codes: (n,) the cluster of each row; strata: (K,) each cluster's stratum; resampled: what a cluster is."""

    codes: np.ndarray
    strata: np.ndarray
    resampled: str

    @property
    def count(self) -> int:
        return len(self.strata)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def clusters_of(ids: Sequence | None, labels: Sequence[int], unit: str = "patients", fallback: str = "images") -> Clusters:
    """Rows sharing a non-empty id form one cluster (stratum: its highest label); a row without an id is a cluster
    of its own. Without any id (`ids` None or all empty) every row is its own cluster and `resampled` is `fallback`."""
    labels = np.asarray(labels).astype(np.int64)
    n = len(labels)
    keys = [None if ids is None or _missing(ids[i]) else str(ids[i]) for i in range(n)]
    resampled = unit if any(k is not None for k in keys) else fallback
    index: dict[object, int] = {}
    codes = np.array([index.setdefault(k if k is not None else ("row", i), len(index)) for i, k in enumerate(keys)], dtype=np.int64)
    strata = np.full(len(index), labels.min() if n else 0, dtype=np.int64)
    np.maximum.at(strata, codes, labels)
    return Clusters(codes, strata, resampled)


def draw_counts(clusters: Clusters, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, K): how often each cluster is drawn; within each stratum as many draws as it has clusters."""
    k = clusters.count
    counts = np.zeros(n_boot * k, dtype=np.int64)
    offsets = (np.arange(n_boot) * k)[:, None]
    for stratum in np.unique(clusters.strata):
        members = np.flatnonzero(clusters.strata == stratum)
        picks = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        counts += np.bincount((offsets + picks).ravel(), minlength=n_boot * k)
    return counts.reshape(n_boot, k)


@dataclass
class BootstrapResult:
    """The valid resamples' values per statistic, and what was resampled (for the report)."""

    draws: dict[str, np.ndarray]
    resampled: str
    clusters: int
    requested: int
    degenerate: int  # resamples redrawn because a statistic was undefined on them

    @property
    def resamples(self) -> int:
        return len(next(iter(self.draws.values()))) if self.draws else 0

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval (NaN without valid resamples)."""
        values = self.draws.get(name, np.zeros(0))
        if len(values) == 0:
            return math.nan, math.nan
        low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
        return float(low), float(high)

    def describe(self) -> dict:
        return {"resampled": self.resampled, "clusters": self.clusters, "resamples": self.resamples,
                "degenerate": self.degenerate}


def cluster_bootstrap(statistic: Statistic, clusters: Clusters, n_boot: int = 1000, seed: int = 0) -> BootstrapResult:
    """`n_boot` valid resamples of `statistic` (deterministic for a seed); undefined ones are redrawn, for at most
    MAX_ROUNDS rounds (then fewer resamples are returned, and `resamples` says how many)."""
    rng = np.random.default_rng(seed)
    n_rows = len(clusters.codes)
    kept: dict[str, list[np.ndarray]] = {}
    valid = degenerate = 0
    chunk = max(1, CHUNK_CELLS // max(n_rows, 1))
    for _ in range(MAX_ROUNDS):
        need = n_boot - valid
        if need <= 0:
            break
        counts = draw_counts(clusters, need, rng)
        for start in range(0, need, chunk):
            values = statistic(counts[start:start + chunk][:, clusters.codes].astype(float))
            ok = np.logical_and.reduce([np.isfinite(v) for v in values.values()])
            for name, v in values.items():
                kept.setdefault(name, []).append(np.asarray(v)[ok])
            valid += int(ok.sum())
            degenerate += int((~ok).sum())
    draws = {name: np.concatenate(parts)[:n_boot] for name, parts in kept.items()}
    return BootstrapResult(draws, clusters.resampled, clusters.count, n_boot, degenerate)
