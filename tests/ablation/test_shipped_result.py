"""The reproduced results shipped in docs/ablation/ (records of real sweeps): complete, and their committed report
is what `medconv ablate report` computes from those records, so docs/ablation.md quotes numbers the code gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medconv.ablation import analysis
from medconv.ablation.records import load_records, records_table

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "docs" / "ablation").glob("wsi_cpu_*"))


def test_results_are_shipped():
    assert SHIPPED, "docs/ablation/ holds no sweep results"


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_sweep_is_complete_and_its_report_matches_the_records(folder: Path):
    records = load_records(folder)
    finetunes = [r for r in records if "fraction" in r]
    assert len(finetunes) == 54 and all(r["status"] == "ok" for r in finetunes)
    assert {(r["backbone"], r["init"], r["fraction"], r["seed"]) for r in finetunes} == {
        (b, i, f, s) for b in ("convnext_atto", "gresnet_tiny", "pvt_v2_b0") for i in ("random", "mim")
        for f in (0.05, 0.25, 1.0) for s in (0, 1, 2)}
    assert len({r["split_seed"] for r in finetunes}) == 1 and len({r["steps"] for r in finetunes}) == 1
    table = records_table(records, "auroc")
    for name, computed in {"arms": analysis.arms_table(table), "cnn_vs_vit": analysis.family_comparison(table)}.items():
        committed = pd.read_csv(folder / "report" / f"{name}.csv")
        assert len(committed) == len(computed)
        for column in ("mean", "ci_low", "ci_high") if name == "arms" else ("diff", "ci_low", "ci_high"):
            assert np.allclose(committed[column].to_numpy(float), computed[column].to_numpy(float), atol=1e-9), (name, column)
