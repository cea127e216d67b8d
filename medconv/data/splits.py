"""Patient-level splits, k folds and nested label fractions: pure functions of the table and the seed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FOLD_STREAM = 1  # the random stream of fold assignment (the train/val/test split uses none)


def _group_strata(groups: Sequence[str], labels: Sequence[int]) -> dict[int, list[str]]:
    """Each patient's stratum is its highest label (a patient with any positive image is positive)."""
    best: dict[str, int] = {}
    for g, y in zip(groups, labels, strict=True):
        best[g] = max(best.get(g, y), y)
    strata: dict[int, list[str]] = {}
    for g in sorted(best):
        strata.setdefault(best[g], []).append(g)
    return strata


def _permuted(items: list[str], seed: int, stratum: int, stream: int | None = None) -> list[str]:
    rng = np.random.default_rng([seed, stratum] if stream is None else [seed, stratum, stream])
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


def assign_folds(groups: Sequence[str], labels: Sequence[int], n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) per row; every patient in exactly one fold, stratified by patient label.

    Each stratum's patients, shuffled by the seed, are dealt round-robin, continuing the rotation from one stratum to
    the next: every fold then holds within one patient of its share of each stratum and of all patients.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, not {n_folds}")
    strata = _group_strata(groups, labels)
    n_patients = sum(len(members) for members in strata.values())
    if n_patients < n_folds:
        raise ValueError(f"{n_patients} patients cannot fill {n_folds} folds; use fewer folds")
    fold_of: dict[str, int] = {}
    dealt = 0
    for stratum in sorted(strata):
        # its own random stream: the folds are not the train/val/test split's permutation cut differently
        for g in _permuted(strata[stratum], seed, stratum, stream=FOLD_STREAM):
            fold_of[g] = dealt % n_folds
            dealt += 1
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def assign_fold_splits(
    groups: Sequence[str], labels: Sequence[int], n_folds: int, fold: int, val_fraction: float, seed: int
) -> np.ndarray:
    """'train' / 'val' / 'test' per row for fold `fold` of patient-level k-fold cross-validation.

    The test set is fold `fold` of `assign_folds`; validation is `val_fraction` of the other folds' patients
    (stratified, as `assign_splits` draws it); the rest is training. Over folds 0..k-1 every patient is tested once.
    """
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1} for n_folds={n_folds}, not {fold}")
    folds = assign_folds(groups, labels, n_folds, seed)
    out = np.full(len(folds), "test", dtype="<U5")
    rest = np.flatnonzero(folds != fold)
    out[rest] = assign_splits([groups[i] for i in rest], [labels[i] for i in rest], val_fraction, 0.0, seed)
    return out


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
