"""Patient-level splits and nested label fractions: pure functions of the table and the seed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _group_strata(groups: Sequence[str], labels: Sequence[int]) -> dict[int, list[str]]:
    """Each patient's stratum is its highest label (a patient with any positive image is positive)."""
    best: dict[str, int] = {}
    for g, y in zip(groups, labels, strict=True):
        best[g] = max(best.get(g, y), y)
    strata: dict[int, list[str]] = {}
    for g in sorted(best):
        strata.setdefault(best[g], []).append(g)
    return strata


def _permuted(items: list[str], seed: int, stratum: int) -> list[str]:
    rng = np.random.default_rng([seed, stratum])
    return [items[i] for i in rng.permutation(len(items))]


def assign_splits(
    groups: Sequence[str], labels: Sequence[int], val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """'train' / 'val' / 'test' per row; every patient in exactly one split, stratified by patient label."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must leave a training split")
    split_of: dict[str, str] = {}
    for stratum, members in _group_strata(groups, labels).items():
        order = _permuted(members, seed, stratum)
        n_test = int(round(test_fraction * len(order)))
        n_val = int(round(val_fraction * len(order)))
        if val_fraction > 0 and n_val == 0 and len(order) - n_test > 1:
            n_val = 1
        for i, g in enumerate(order):
            split_of[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return np.array([split_of[g] for g in groups])


def label_fraction_mask(groups: Sequence[str], labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Rows kept when training on `fraction` of the labelled patients.

    Nested: one permutation per stratum depends only on the seed, and a fraction takes its prefix, so the
    1% subset is inside the 10% subset. Stratified, with at least one patient per stratum.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    keep: set[str] = set()
    for stratum, members in _group_strata(groups, labels).items():
        order = _permuted(members, seed + 1_000_003, stratum)
        keep.update(order[: max(1, int(np.ceil(fraction * len(order))))])
    return np.array([g in keep for g in groups])
