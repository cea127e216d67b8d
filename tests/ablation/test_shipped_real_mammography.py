"""The mini-MIAS evidence shipped in docs/real_mammography/: its pooled out-of-fold tables are what medconv computes
from the committed per-image predictions, so docs/real_mammography.md quotes numbers the code gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medconv.ablation.oof import paired_arms, pooled_oof

SHIPPED = Path(__file__).resolve().parents[2] / "docs" / "real_mammography"


def test_pooled_out_of_fold_tables_match_the_committed_predictions():
    predictions = pd.read_csv(SHIPPED / "oof_predictions.csv", dtype={"image_id": str, "patient_id": str})
    # each arm scores every image at most once, and a patient's images share one fold
    assert not predictions.duplicated(["arm", "seed", "image_id"]).any()
    assert (predictions.groupby(["arm", "patient_id"])["fold"].nunique() == 1).all()
    committed = pd.read_csv(SHIPPED / "report" / "oof_arms.csv")
    computed = pooled_oof(predictions)
    assert committed["arm"].tolist() == computed["arm"].tolist()
    for column in ("n", "auroc", "ci_low", "ci_high"):
        assert np.allclose(committed[column].to_numpy(float), computed[column].to_numpy(float), atol=1e-9), column
    paired = pd.read_csv(SHIPPED / "report" / "oof_paired.csv")
    for row in paired.itertuples():
        again = paired_arms(predictions, row.a, row.b)
        assert np.isclose(again["diff"].iloc[0], row.diff) and np.isclose(again["delong_p"].iloc[0], row.delong_p)
