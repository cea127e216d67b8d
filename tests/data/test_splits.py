import numpy as np
import pytest

from medconv.data.splits import assign_fold_splits, assign_folds, assign_splits, label_fraction_mask


def _patients(n_pos: int = 30, n_neg: int = 70, per: int = 4):
    groups, labels = [], []
    for i in range(n_pos + n_neg):
        for _ in range(per):
            groups.append(f"p{i:03d}")
            labels.append(1 if i < n_pos else 0)
    return groups, labels


def test_splits_are_by_patient_and_stratified():
    groups, labels = _patients()
    split = assign_splits(groups, labels, 0.2, 0.1, seed=3)
    for g in set(groups):
        assert len({s for s, gg in zip(split, groups, strict=True) if gg == g}) == 1
    pos = {g for g, y in zip(groups, labels, strict=True) if y}
    for name, expected_pos in (("val", 6), ("test", 3)):
        in_split = {g for g, s in zip(groups, split, strict=True) if s == name}
        assert len(in_split & pos) == expected_pos
        assert len(in_split - pos) == round(70 * (0.2 if name == "val" else 0.1))


def test_splits_depend_only_on_seed():
    groups, labels = _patients()
    a = assign_splits(groups, labels, 0.2, 0.0, seed=1)
    assert (a == assign_splits(groups, labels, 0.2, 0.0, seed=1)).all()
    assert (a != assign_splits(groups, labels, 0.2, 0.0, seed=2)).any()
    assert set(a) == {"train", "val"}


def test_label_fractions_are_nested_and_keep_every_class():
    groups, labels = _patients(n_pos=20, n_neg=180)
    masks = {f: label_fraction_mask(groups, labels, f, seed=0) for f in (0.01, 0.1, 0.5, 1.0)}
    assert masks[1.0].all()
    assert (masks[0.01] <= masks[0.1]).all() and (masks[0.1] <= masks[0.5]).all()
    kept = np.array(labels)[masks[0.01]]
    assert set(kept) == {0, 1}
    kept_patients = {g for g, m in zip(groups, masks[0.1], strict=True) if m}
    assert len(kept_patients) == 2 + 18


def test_bad_fractions_raise():
    groups, labels = _patients(2, 2)
    with pytest.raises(ValueError):
        assign_splits(groups, labels, 0.6, 0.5, seed=0)
    with pytest.raises(ValueError):
        label_fraction_mask(groups, labels, 0.0, seed=0)


# --- patient-level k-fold ----------------------------------------------------------------------------
def _uneven_patients():
    """23 patients, 7 positive, 1-3 images each (a positive patient may have negative images too)."""
    groups, labels = [], []
    for i in range(23):
        for k in range(1 + i % 3):
            groups.append(f"p{i:02d}")
            labels.append(1 if i < 7 and k == 0 else 0)
    return groups, labels


@pytest.mark.parametrize("n_folds", [2, 3, 5])
def test_every_patient_is_tested_once_in_stratified_folds(n_folds):
    groups, labels = _uneven_patients()
    folds = assign_folds(groups, labels, n_folds, seed=4)
    fold_of = {}
    for g, f in zip(groups, folds, strict=True):
        assert fold_of.setdefault(g, f) == f  # all of a patient's images in one fold
    positive = {g for g, y in zip(groups, labels, strict=True) if y}
    for f in range(n_folds):
        members = {g for g, k in fold_of.items() if k == f}
        # within one patient of the ideal share, of all patients and of each label
        assert abs(len(members) - 23 / n_folds) < 1
        assert abs(len(members & positive) - 7 / n_folds) < 1
    tested = []
    for f in range(n_folds):
        split = assign_fold_splits(groups, labels, n_folds, f, 0.25, seed=4)
        test = {g for g, s in zip(groups, split, strict=True) if s == "test"}
        assert test == {g for g, k in fold_of.items() if k == f}
        val = {g for g, s in zip(groups, split, strict=True) if s == "val"}
        train = {g for g, s in zip(groups, split, strict=True) if s == "train"}
        assert not (val & train) and not (val | train) & test and val and val & positive
        assert abs(len(val) - 0.25 * (23 - len(test))) <= 2  # carved per stratum, each rounded
        tested += sorted(test)
    assert sorted(tested) == sorted(set(groups))  # each patient tested exactly once over the folds


def test_folds_depend_only_on_the_seed():
    groups, labels = _uneven_patients()
    a = assign_folds(groups, labels, 4, seed=1)
    assert (a == assign_folds(groups, labels, 4, seed=1)).all()
    assert (a != assign_folds(groups, labels, 4, seed=2)).any()
    order = np.random.default_rng(0).permutation(len(groups))  # row order does not matter, only the patients
    shuffled = assign_folds([groups[i] for i in order], [labels[i] for i in order], 4, seed=1)
    assert (shuffled == a[order]).all()


def test_bad_fold_settings_raise():
    groups, labels = _uneven_patients()
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(groups, labels, 1, seed=0)
    with pytest.raises(ValueError, match="cannot fill"):
        assign_folds(groups, labels, 30, seed=0)
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        assign_fold_splits(groups, labels, 3, 3, 0.2, seed=0)
