"""Pooled out-of-fold calibration and subgroup AUROCs: hand-checked values, and subgroup values read from the
manifest the runs trained on (matched by resolved path, or by a unique file name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medconv.ablation.oof_breakdown import manifest_column, pooled_calibration, pooled_subgroups, subgroup_tables
from medconv.errors import InputFileError


def _predictions(tmp_path: Path) -> pd.DataFrame:
    # 20 images of 10 patients; density D for the first 10 (perfectly ranked), F for the rest (reversed)
    label = np.tile([0, 1], 10)
    prob = np.where(np.arange(20) < 10, np.where(label == 1, 0.9, 0.1), np.where(label == 1, 0.2, 0.8))
    return pd.DataFrame({"arm": "a", "seed": 0, "fold": np.arange(20) % 5, "image_id": [f"img/{i}.png" for i in range(20)],
                         "patient_id": [f"p{i // 2}" for i in range(20)], "label": label, "prob": prob})


def test_pooled_calibration_matches_a_hand_computation(tmp_path):
    df = _predictions(tmp_path)
    table = pooled_calibration(df, plots=tmp_path)
    # bins: 0.1 (5 negatives), 0.9 (5 positives), 0.2 (5 positives), 0.8 (5 negatives); each bin's gap |observed - p|
    # 0.1, 0.1, 0.8, 0.8, weighted by 5/20 each -> 0.45; Brier: (5 * 0.01 * 2 + 5 * 0.64 * 2) / 20 = 0.325
    assert table.loc[0, "ece"] == pytest.approx(0.45) and table.loc[0, "brier"] == pytest.approx(0.325)
    assert (tmp_path / "reliability_a_s0.png").is_file()


def test_subgroups_from_the_manifest_by_path_or_unique_name(tmp_path):
    df = _predictions(tmp_path)
    (tmp_path / "img").mkdir()
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.parent.mkdir()
    # image_path relative to the manifest's folder; the predictions name the same files relative to tmp_path
    pd.DataFrame({"image_path": [f"../img/{i}.png" for i in range(20)],
                  "density": ["D"] * 10 + ["F"] * 10}).to_csv(manifest, index=False)
    values = manifest_column(df, manifest, "density", base=tmp_path)
    assert values.tolist() == ["D"] * 10 + ["F"] * 10
    # from elsewhere the paths do not resolve, but the file names are unique
    assert manifest_column(df, manifest, "density", base=tmp_path / "data").tolist() == values.tolist()
    table = pooled_subgroups(df, values, n_boot=200)
    by = table.set_index("density")
    assert by.loc["D", "auroc"] == pytest.approx(1.0) and by.loc["F", "auroc"] == pytest.approx(0.0)
    assert by.loc["D", "n"] == 10 and by.loc["D", "patients"] == 5 and by.loc["D", "positives"] == 5
    assert by.loc["D", "ci_low"] <= 1.0 and "no interval" not in by.loc["D", "note"]
    with pytest.raises(InputFileError, match="no column 'site'"):
        manifest_column(df, manifest, "site", base=tmp_path)
    with pytest.raises(InputFileError, match="not in"):
        manifest_column(df.assign(image_id="elsewhere/x.png"), manifest, "density", base=tmp_path)
    # a column the runs' predictions carry themselves needs no manifest
    own = subgroup_tables(df.assign(site=["s1", "s2"] * 10), ["site"], None, n_boot=0)["oof_by_site"]
    assert set(own["site"]) == {"s1", "s2"}
    with pytest.raises(InputFileError, match="--manifest"):
        subgroup_tables(df, ["density"], None)
