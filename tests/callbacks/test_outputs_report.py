"""The test/validate report RunOutputs writes: patient-bootstrap intervals that say what they resampled,
calibration with its reliability diagram, subgroup metrics from manifest columns (hand-made rows, no model)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from medconv.callbacks import RunOutputs
from medconv.errors import ConfigError


def _rows(n_patients: int = 30) -> dict:
    rng = np.random.default_rng(0)
    sick = np.arange(n_patients) % 3 == 0
    labels = np.concatenate([[int(s), 0] for s in sick])
    scores = 1 / (1 + np.exp(-(np.repeat(rng.normal(size=n_patients), 2) + 1.5 * labels)))
    return {"probs": np.stack([1 - scores, scores], 1), "labels": labels,
            "image_id": [f"/data/img{i}.png" for i in range(2 * n_patients)],
            "patient_id": [f"p{i // 2}" for i in range(2 * n_patients)]}


def _trainer(tmp_path: Path, table: pd.DataFrame) -> SimpleNamespace:
    datamodule = SimpleNamespace(manifest=str(tmp_path / "manifest.csv"), classes=["normal", "cancer"], splits={"test": table, "val": table})
    return SimpleNamespace(loggers=[SimpleNamespace(log_dir=str(tmp_path / "eval"))], default_root_dir=str(tmp_path),
                           ckpt_path=str(tmp_path / "best.ckpt"), datamodule=datamodule)


def _table(rows: dict) -> pd.DataFrame:
    return pd.DataFrame({"image_path": rows["image_id"], "patient_id": rows["patient_id"],
                         "density": [("fatty", "dense")[i // 2 % 2] for i in range(len(rows["image_id"]))]})


def test_report_says_what_it_resampled_and_adds_calibration_and_subgroups(tmp_path, capsys):
    rows = _rows()
    trainer = _trainer(tmp_path, _table(rows))
    module = SimpleNamespace(eval_rows=rows, eval_groups={}, group_reduce="max")
    outputs = RunOutputs(bootstrap=300, subgroups=["density"])
    outputs.setup(trainer, module, "test")
    outputs.on_test_end(trainer, module)
    folder = tmp_path / "eval"
    report = json.loads((folder / "test_metrics.json").read_text())
    boot = report["bootstrap"]
    assert boot["resampled"] == "patients" and boot["levels"]["image"] == {"resampled": "patients", "clusters": 30,
                                                                           "resamples": 300, "degenerate": 0}
    m = report["metrics"]
    assert 0 <= m["auroc_ci_low"] <= m["auroc"] <= m["auroc_ci_high"] <= 1 and 0 <= m["ece"] <= 1 and 0 <= m["brier"] <= 1
    assert (folder / "reliability_test.png").stat().st_size > 1000 and (folder / "roc_test.png").is_file()
    density = report["subgroups"]["density"]
    assert set(density) == {"fatty", "dense"} and density["fatty"]["n"] + density["dense"]["n"] == 60
    assert density["fatty"]["patients"] == 15 and "auroc" in density["dense"]
    assert pd.read_csv(folder / "test_predictions.csv")["density"].tolist()[:4] == ["fatty", "fatty", "dense", "dense"]
    printed = capsys.readouterr().out
    assert "95% percentile bootstrap over 30 patients, 300 resamples" in printed and "density=dense" in printed
    assert "reliability_test.png" in printed and "image    ece" in printed


def test_without_patient_ids_images_are_resampled(tmp_path):
    rows = {k: v for k, v in _rows().items() if k != "patient_id"}
    trainer = _trainer(tmp_path, _table(_rows()))
    RunOutputs(bootstrap=100).on_test_end(trainer, SimpleNamespace(eval_rows=rows, eval_groups={}, group_reduce="max"))
    report = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    assert report["bootstrap"]["resampled"] == "images" and report["bootstrap"]["levels"]["image"]["clusters"] == 60


def test_a_subgroup_column_the_manifest_lacks_is_refused_before_evaluation(tmp_path):
    rows = _rows()
    trainer = _trainer(tmp_path, _table(rows))
    with pytest.raises(ConfigError, match=r"manifest.csv: no column 'scanner'.*density"):
        RunOutputs(subgroups=["scanner"]).setup(trainer, SimpleNamespace(), "test")
