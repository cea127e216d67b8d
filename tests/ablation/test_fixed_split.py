"""split_seed fixes the patient split while `seed` draws the nested, stratified label subset (what an ablation needs)."""

from __future__ import annotations

import pandas as pd
import pytest

from medconv.data.datamodule import ClassificationDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


class TableDataModule(ClassificationDataModule):
    """Hand-made rows (two images per patient, 40 patients, a quarter of them positive); datasets are the tables."""

    def load_table(self) -> pd.DataFrame:
        patients = [f"p{i:02d}" for i in range(40)]
        return pd.DataFrame({"patient_id": [p for p in patients for _ in range(2)],
                             "label": ["tumor" if i % 4 == 0 else "normal" for i in range(40) for _ in range(2)]})

    def make_dataset(self, table: pd.DataFrame, stage: str) -> pd.DataFrame:
        return table


def _splits(fraction: float, seed: int, split_seed: int | None = 7) -> dict[str, set[str]]:
    dm = TableDataModule(classes=["normal", "tumor"], val_fraction=0.2, test_fraction=0.25, label_fraction=fraction,
                         seed=seed, split_seed=split_seed)
    dm.setup("fit")
    return {name: set(dm.splits[name]["patient_id"]) for name in ("train", "val", "test")} | {
        "positive_train": set(dm.splits["train"].loc[dm.splits["train"]["label"] == "tumor", "patient_id"])}


def test_split_seed_fixes_val_and_test_across_fractions_and_seeds():
    reference = _splits(1.0, 0)
    for fraction in (0.05, 0.25, 1.0):
        for seed in (0, 1, 2):
            s = _splits(fraction, seed)
            assert s["test"] == reference["test"] and s["val"] == reference["val"]
            assert not s["train"] & (s["test"] | s["val"])


def test_fractions_are_nested_per_seed_and_stratified():
    for seed in (0, 1, 2):
        subsets = [_splits(f, seed) for f in (0.05, 0.25, 0.5, 1.0)]
        for small, large in zip(subsets, subsets[1:], strict=False):
            assert small["train"] <= large["train"]
        for s in subsets:
            assert s["positive_train"] and s["train"] - s["positive_train"]  # both classes in every subset
    assert _splits(0.25, 0)["train"] != _splits(0.25, 1)["train"]  # the seed draws the subset


def test_without_split_seed_the_seed_draws_the_split_as_before():
    assert _splits(1.0, 3, split_seed=None)["test"] == _splits(1.0, 99, split_seed=3)["test"]
    assert _splits(1.0, 0, split_seed=None)["test"] != _splits(1.0, 1, split_seed=None)["test"]
