"""The base datamodule's split rules per stage: external sets are evaluated whole, bad fractions are config errors."""

import pandas as pd
import pytest

from medconv.data.datamodule import ClassificationDataModule, patient_hash
from medconv.errors import ConfigError


class _Table(ClassificationDataModule):
    def __init__(self, table: pd.DataFrame, **kwargs):
        super().__init__(manifest="m.csv", num_workers=0, **kwargs)
        self._given = table

    def load_table(self) -> pd.DataFrame:
        return self._given

    def make_dataset(self, table: pd.DataFrame, stage: str):
        return table


def _table(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"label": ["a", "b"] * (n // 2), "patient_id": [f"p{i}" for i in range(n)]})


def test_external_manifest_is_tested_whole():
    dm = _Table(_table(), classes=["a", "b"], test_fraction=0.0)
    dm.setup("test")
    assert len(dm.datasets["test"]) == 20
    dm.setup("fit")  # training on the same table still splits by patient
    assert len(dm.splits["test"]) == 0 and 0 < len(dm.splits["val"]) < 20


def test_impossible_fractions_are_a_config_error_not_a_traceback():
    dm = _Table(_table(), classes=["a", "b"], test_fraction=1.0)
    with pytest.raises(ConfigError, match="m.csv: .*must leave a training split.*without a split column"):
        dm.setup("fit")


def test_checkpoint_keeps_only_hashes_of_fitted_patients():
    dm = _Table(_table(), classes=["a", "b"], val_fraction=0.25)
    dm.setup("fit")
    state = dm.state_dict()
    fitted = set(dm.splits["train"]["patient_id"]) | set(dm.splits["val"]["patient_id"])
    assert state["fit_patient_hashes"] == sorted(patient_hash(p) for p in fitted)
    assert not any(p in h for p in fitted for h in state["fit_patient_hashes"])
