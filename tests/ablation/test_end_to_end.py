"""`medconv ablate` for real on CPU: configs/tests/tiny_ablation.yaml (a tiny CNN and a tiny hierarchical ViT, two
label fractions, one seed, a few steps on tiny demo slides), then a rerun that resumes, then the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medconv.ablation.cli import main

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.integration, pytest.mark.slow]


def test_tiny_sweep_runs_resumes_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo slides are generated under the working directory, shared by the runs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children: tiny models, a shared 2-core machine
    out = tmp_path / "sweep"
    sweep = str(REPO / "configs" / "tests" / "tiny_ablation.yaml")
    assert main(["--config", sweep, "--out", str(out)]) == 0
    records = {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}
    assert set(records) == {"convnext_atto-random-f0.5-s0", "convnext_atto-random-f1-s0", "pvt_v2_b0-random-f0.5-s0",
                            "pvt_v2_b0-random-f1-s0"}
    for record in records.values():
        assert record["status"] == "ok", record.get("error")
        assert 0 <= record["test"]["auroc"] <= 1 and record["test"]["n"] > 0 and "auroc" in record["val"]
        assert record["config"]["trainer"]["max_steps"] == 4 and record["config"]["data"]["init_args"]["split_seed"] == 0
        assert record["train_images_per_s"] > 0 and record["peak_rss_mb"] > 0 and record["wall_s"] > 0
        assert Path(record["run_dir"], "eval").is_dir()  # the test report lives in the run's eval/ folder
    # the same test and validation tiles for every run, whatever its fraction: the split is fixed by split_seed
    assert len({(r["test"]["n"], r["val"]["n"]) for r in records.values()}) == 1

    capsys.readouterr()
    assert main(["--config", sweep, "--out", str(out)]) == 0  # resume: nothing left to run
    assert "4 done, 0 to run" in capsys.readouterr().out

    assert main(["report", str(out)]) == 0
    report = out / "report"
    for name in ("report.md", "arms.csv", "cnn_vs_vit.csv", "cost.csv", "auroc_vs_fraction.png", "cost.png"):
        assert (report / name).stat().st_size > 0, name
    assert "4 finished runs" in (report / "report.md").read_text()
