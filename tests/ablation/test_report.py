"""Seeded comparison tables, checked against values worked out by hand; pooled out-of-fold tables of k-fold sweeps."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from medconv.ablation.oof import paired_arms, pooled_oof
from medconv.ablation.report import mean_ci, paired_difference, summarise, to_markdown
from medconv.ablation.report_writer import write_report
from medconv.stats.delong import delong_test


def test_mean_ci_is_students_t_over_seeds():
    mean, low, high = mean_ci([0.7, 0.8, 0.9])
    # sd 0.1, n 3: half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.3027 * 0.057735 = 0.24842
    assert mean == pytest.approx(0.8)
    assert (low, high) == pytest.approx((0.8 - 0.24842, 0.8 + 0.24842), abs=1e-4)
    assert math.isnan(mean_ci([0.5])[1]) and math.isnan(mean_ci([])[0])


def test_paired_difference_matches_runs_on_seed_and_arm():
    records = pd.DataFrame({
        "backbone": ["cnn"] * 6, "seed": [0, 1, 2] * 2, "init": ["ssl"] * 3 + ["random"] * 3,
        "auroc": [0.80, 0.70, 0.95, 0.75, 0.60, 0.95],
    })
    table = paired_difference(records, ["backbone"], "init", "ssl", "random", "auroc")
    row = table.iloc[0]
    # pairs: 0.05, 0.10, 0.00 -> mean 0.05, sd 0.05, half-width 4.3027 * 0.05 / sqrt(3) = 0.12421
    assert row.pairs == 3 and row.wins == 2
    assert row["diff"] == pytest.approx(0.05) and row.ci_low == pytest.approx(0.05 - 0.12421, abs=1e-4)
    arms = summarise(records, ["backbone", "init"], "auroc")
    assert list(arms["init"]) == ["random", "ssl"] and list(arms["n"]) == [3, 3]
    assert arms.iloc[1]["values"] == "0.800 0.700 0.950"
    assert to_markdown(arms).splitlines()[0].startswith("| backbone | init | n | mean")


def test_intervals_of_near_perfect_arms_stay_inside_zero_one():
    records = pd.DataFrame({"backbone": ["cnn"] * 3, "seed": [0, 1, 2], "auroc": [0.99, 1.0, 0.95]})
    row = summarise(records, ["backbone"], "auroc").iloc[0]
    # plain t: 0.98 +/- 4.3027 * 0.02646 / sqrt(3) = 0.98 +/- 0.0657 reaches 1.046; cut at 1
    assert row.ci_high == 1.0 and row.ci_low == pytest.approx(0.98 - 0.06573, abs=1e-4)
    assert mean_ci([0.99, 1.0, 0.95])[2] > 1  # without bounds: the plain t interval


def _oof_table(shift_b: float = 0.0, n_patients: int = 60, folds: int = 3, seeds=(0, 1)) -> pd.DataFrame:
    """Two arms scoring the same 2 images per patient, each patient in one test fold; arm b's scores are arm a's plus
    `shift_b` times extra noise."""
    rng = np.random.default_rng(5)
    sick = np.arange(n_patients) % 3 == 0
    rows = []
    for run_seed in seeds:
        for p in range(n_patients):
            for view in range(2):
                label = int(sick[p] and view == 0)
                base = rng.normal() + 1.2 * label
                for arm, score in (("a", base), ("b", base + shift_b * rng.normal())):
                    rows.append(dict(arm=arm, fold=p % folds, seed=run_seed, image_id=f"img{p}-{view}", patient_id=f"p{p}",
                                     label=label, prob=1 / (1 + np.exp(-score))))
    return pd.DataFrame(rows)


def test_pooled_oof_scores_every_image_once_with_a_patient_interval():
    df = _oof_table(shift_b=1.0)
    table = pooled_oof(df, n_boot=300)
    assert list(table["arm"]) == ["a", "a", "b", "b"] and set(table["folds"]) == {3} and set(table["coverage"]) == {1.0}
    row = table.iloc[0]
    part = df[(df.arm == "a") & (df.seed == 0)]
    assert row.n == 120 and row.patients == 60 and row.positives == 20 and row.resampled == "patients"
    assert row.auroc == pytest.approx(float(binary_auroc(torch.tensor(part.prob.to_numpy()), torch.tensor(part.label.to_numpy()))), abs=1e-6)
    assert 0 <= row.ci_low < row.auroc < row.ci_high <= 1 and row.clusters == 60
    with pytest.raises(ValueError, match="out-of-fold more than once.*folds \\[0, 1\\]"):
        pooled_oof(pd.concat([df, df[(df.image_id == "img0-0") & (df.arm == "a") & (df.seed == 0)].assign(fold=1)]))


def test_paired_arms_compare_the_same_images():
    df = _oof_table(shift_b=1.5)
    table = paired_arms(df, "a", "b", n_boot=300)
    assert list(table["seed"]) == [0, 1] and set(table["n"]) == {120}
    row = table.iloc[0]
    a = df[(df.arm == "a") & (df.seed == 0)].set_index("image_id").sort_index()
    b = df[(df.arm == "b") & (df.seed == 0)].set_index("image_id").sort_index()
    reference = delong_test(a.prob.to_numpy(), b.prob.to_numpy(), a.label.to_numpy())
    assert row["diff"] == pytest.approx(reference.diff) and row.delong_p == pytest.approx(reference.p)
    assert row["diff"] > 0 and row.boot_ci_low <= row["diff"] <= row.boot_ci_high and row.resampled == "patients"
    same = paired_arms(_oof_table(shift_b=0.0), "a", "b", n_boot=100).iloc[0]
    assert same["diff"] == 0 and same.boot_ci_low == same.boot_ci_high == 0 and same.delong_p == 1.0


def test_report_of_a_k_fold_sweep_pools_its_test_predictions(tmp_path):
    """Records with a `fold` and the test predictions their runs left: the report adds the pooled OOF tables."""
    df = _oof_table(shift_b=1.0, seeds=(0,))
    folder = tmp_path / "sweep" / "records"
    folder.mkdir(parents=True)
    for (arm, fold), part in df.groupby(["arm", "fold"]):
        backbone, family = ("pvt", "vit") if arm == "b" else ("resnet", "cnn")
        run_id = f"{backbone}-random-f1-s0-fold{fold}"
        run_dir = tmp_path / "sweep" / "runs" / run_id / "version_0"
        (run_dir / "eval" / "test-1").mkdir(parents=True)
        pd.DataFrame({"image_id": part.image_id, "patient_id": part.patient_id, "label_index": part.label,
                      "prob_0": 1 - part.prob, "prob_1": part.prob}).to_csv(run_dir / "eval" / "test-1" / "test_predictions.csv", index=False)
        record = dict(run_id=run_id, status="ok", backbone=backbone, family=family, init="random", init_kind="random", fraction=1.0,
                      seed=0, fold=int(fold), run_dir=str(run_dir), test={"auroc": 0.8}, val={"auroc": 0.8})
        (folder / f"{run_id}.json").write_text(json.dumps(record))
    out = write_report(tmp_path / "sweep")
    arms = pd.read_csv(out / "oof_arms.csv")
    assert list(arms["arm"]) == ["pvt/random/1.0", "resnet/random/1.0"] and set(arms["n"]) == {120} and set(arms["folds"]) == {3}
    paired = pd.read_csv(out / "oof_paired.csv")
    assert (paired["a"].iloc[0], paired["b"].iloc[0]) == ("pvt/random/1.0", "resnet/random/1.0") and paired["n"].iloc[0] == 120
    assert "Pooled out-of-fold AUROC" in (out / "report.md").read_text()
