"""`n_folds` / `fold` on the base datamodule: the test set is one fold, validation comes from the other folds."""

from __future__ import annotations

import pandas as pd
import pytest

from medconv.data.datamodule import ClassificationDataModule, patient_hash
from medconv.errors import ConfigError


class _Table(ClassificationDataModule):
    """30 patients, two images each, a third of them positive; datasets are the tables themselves."""

    def __init__(self, table: pd.DataFrame | None = None, **kwargs):
        super().__init__(manifest="m.csv", classes=["normal", "tumor"], num_workers=0, **kwargs)
        patients = [f"p{i:02d}" for i in range(30)]
        self._given = table if table is not None else pd.DataFrame({
            "patient_id": [p for p in patients for _ in range(2)],
            "label": ["tumor" if i % 3 == 0 else "normal" for i in range(30) for _ in range(2)]})

    def load_table(self) -> pd.DataFrame:
        return self._given

    def make_dataset(self, table: pd.DataFrame, stage: str) -> pd.DataFrame:
        return table


def _patients(dm: ClassificationDataModule, name: str) -> set[str]:
    return set(dm.splits[name]["patient_id"])


def test_folds_cover_every_patient_once_and_keep_fractions_nested():
    tested: list[str] = []
    for fold in range(3):
        dm = _Table(n_folds=3, fold=fold, split_seed=5, val_fraction=0.2)
        dm.setup("test")  # a fold run's `medconv test` evaluates its fold, not the whole table
        test = _patients(dm, "test")
        assert len(test) == 10 and not test & (_patients(dm, "train") | _patients(dm, "val"))
        positives = set(dm.splits["test"].loc[dm.splits["test"]["label"] == "tumor", "patient_id"])
        assert len(positives) in (3, 4)  # 10 positive patients over 3 folds
        assert 0 < len(_patients(dm, "val")) <= 5
        assert {patient_hash(p) for p in test}.isdisjoint(dm.state_dict()["fit_patient_hashes"])
        tested += sorted(test)
        small = _Table(n_folds=3, fold=fold, split_seed=5, label_fraction=0.25, seed=1)
        small.setup("fit")
        assert _patients(small, "train") < _patients(dm, "train")  # a label subset of the same training patients
        assert _patients(small, "test") == test and _patients(small, "val") == _patients(dm, "val")
    assert sorted(tested) == sorted(f"p{i:02d}" for i in range(30))


def test_fold_settings_are_recorded_and_null_keeps_one_split():
    dm = _Table(n_folds=4, fold=2, split_seed=9)
    assert {k: dm.describe()[k] for k in ("n_folds", "fold", "split_seed")} == {"n_folds": 4, "fold": 2, "split_seed": 9}
    plain = _Table(test_fraction=0.2, seed=3)
    assert {k: plain.describe()[k] for k in ("n_folds", "fold", "split_seed")} == {"n_folds": None, "fold": None, "split_seed": 3}
    plain.setup("fit")
    assert len(_patients(plain, "test")) == 6  # 20% of each stratum, as without folds


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_folds": 1}, "n_folds must be an integer >= 2"),
    ({"n_folds": 3, "fold": 3}, r"fold must be in 0..2"),
    ({"n_folds": 3, "test_fraction": 0.2}, "set test_fraction to 0"),
])
def test_bad_fold_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _Table(**kwargs).setup("fit")


def test_a_split_column_and_folds_do_not_mix():
    table = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "label": ["normal", "tumor"] * 2, "split": ["train"] * 4})
    with pytest.raises(ConfigError, match="m.csv: n_folds=2 draws its own patient folds.*split"):
        _Table(table, n_folds=2).setup("fit")
