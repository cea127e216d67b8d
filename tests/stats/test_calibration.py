"""ECE and Brier against a hand computation and torchmetrics; intervals cut to the metric's range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from medconv.stats.calibration import brier_score, calibration_metrics, expected_calibration_error, reliability
from medconv.stats.intervals import t_interval

PROBS = np.array([0.05, 0.15, 0.12, 0.95, 0.85, 0.55])
LABELS = np.array([0, 0, 1, 1, 1, 0])


def test_ece_by_hand():
    # 10 bins: [0, .1) {.05: 0} gap .05; [.1, .2) {.15: 0, .12: 1} mean .135, observed .5, gap .365;
    # [.5, .6) {.55: 0} gap .55; [.8, .9) {.85: 1} gap .15; [.9, 1] {.95: 1} gap .05.
    # ECE = (.05 + 2 x .365 + .55 + .15 + .05) / 6 = 1.53 / 6.
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(1.53 / 6)
    # 3 equal-count bins of the sorted probabilities: {.05, .12} gap |.5 - .085|, {.15, .55} gap .35, {.85, .95} gap .1.
    assert expected_calibration_error(PROBS, LABELS, 3, "quantile") == pytest.approx((0.415 + 0.35 + 0.1) / 3)
    # Brier: (.05^2 + .15^2 + .88^2 + .05^2 + .15^2 + .55^2) / 6
    assert brier_score(PROBS, LABELS) == pytest.approx(1.1269 / 6)
    table = reliability(PROBS, LABELS)
    assert table["count"].tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 1, 1] and table["observed"][1] == 0.5


def test_ece_is_torchmetrics_calibration_error():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 0.999, 500)
    labels = (rng.uniform(size=500) < probs**2).astype(int)  # over-confident
    ours = expected_calibration_error(probs, labels)
    assert ours == pytest.approx(float(binary_calibration_error(torch.tensor(probs), torch.tensor(labels), n_bins=10)), abs=1e-9)
    multi = rng.dirichlet([2, 1, 1], 300)
    classes = rng.integers(0, 3, 300)
    reference = float(multiclass_calibration_error(torch.tensor(multi), torch.tensor(classes), num_classes=3, n_bins=10))
    assert calibration_metrics(multi, classes)["ece"] == pytest.approx(reference, abs=1e-6)  # torchmetrics: float32
    perfect = calibration_metrics(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    assert perfect == {"ece": 0.0, "ece_adaptive": 0.0, "brier": 0.0}  # p = 1 falls in the last, closed bin


def test_t_interval_of_near_perfect_aurocs_stays_at_most_one():
    mean, low, high = t_interval([0.99, 1.0, 0.95], bounds=(0.0, 1.0))
    plain = t_interval([0.99, 1.0, 0.95])
    assert plain[2] > 1 and high == 1.0 and low == pytest.approx(plain[1]) and mean == pytest.approx(0.98)
    assert t_interval([-0.9, -1.0, -0.95], bounds=(-1.0, 1.0))[1] == -1.0
