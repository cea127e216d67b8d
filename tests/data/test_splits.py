import numpy as np
import pytest

from medconv.data.splits import assign_splits, label_fraction_mask


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
