"""Seeded comparison tables, checked against values worked out by hand."""

import math

import pandas as pd
import pytest

from medconv.ablation.report import mean_ci, paired_difference, summarise, to_markdown


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
