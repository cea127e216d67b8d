import math

import numpy as np
import pytest

from medconv.tasks.metrics import aggregate_groups, bootstrap_ci, classification_metrics, evaluate


def test_group_max_over_views():
    keys = [("e1", "L"), ("e1", "L"), ("e1", "R"), ("e2", "L")]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([1, 1, 0, 0])
    g_keys, g_probs, g_labels = aggregate_groups(keys, probs, labels, "max")
    assert g_keys == [("e1", "L"), ("e1", "R"), ("e2", "L")]
    assert g_probs[:, 1].tolist() == [0.8, 0.3, 0.4]
    assert g_labels.tolist() == [1, 0, 0]


def test_perfect_and_inverted_scores():
    labels = np.array([0, 0, 0, 1, 1])
    good = np.stack([1 - np.array([0.1, 0.2, 0.3, 0.8, 0.9]), np.array([0.1, 0.2, 0.3, 0.8, 0.9])], 1)
    m = classification_metrics(good, labels)
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0 and m["bal_acc"] == 1.0 and m["sens_at_90spec"] == 1.0
    assert classification_metrics(good[:, ::-1].copy(), labels)["auroc"] == 0.0


def test_sensitivity_at_specificity_hand_case():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.5, 0.97, 0.99])
    labels = np.array([0] * 10 + [1] * 3)
    # At >= 90% specificity at most one negative (0.95) may score above the threshold: positives above it
    # are 0.97 and 0.99, and 0.5 is missed.
    m = classification_metrics(np.stack([1 - scores, scores], 1), labels)
    assert m["sens_at_90spec"] == pytest.approx(2 / 3)


def test_single_class_gives_nan():
    m = classification_metrics(np.array([[0.5, 0.5], [0.4, 0.6]]), np.array([1, 1]))
    assert math.isnan(m["auroc"])


def test_bootstrap_ci_brackets_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 10)
    scores = np.clip(rng.normal(0.35, 0.15, 40) + 0.25 * labels, 0, 1)
    probs = np.stack([1 - scores, scores], 1)
    point = classification_metrics(probs, labels)
    ci = bootstrap_ci(probs, labels, n_boot=300, seed=1)
    for name in ("auroc", "auprc"):
        low, high = ci[name]
        assert 0 <= low < point[name] < high <= 1
    assert ci == bootstrap_ci(probs, labels, n_boot=300, seed=1)
    assert bootstrap_ci(probs, np.ones(40, int), n_boot=10) == {}


def test_separable_scores_have_a_degenerate_interval():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert bootstrap_ci(np.stack([1 - scores, scores], 1), labels, n_boot=50)["auroc"] == (1.0, 1.0)


def test_evaluate_reports_groups_with_intervals():
    rows = {
        "probs": np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7]]),
        "labels": np.array([1, 1, 0, 0, 0, 1]),
        "exam_id": ["e1", "e1", "e1", "e2", "e3", "e3"],
        "laterality": ["L", "L", "R", "L", "L", "L"],
    }
    out = evaluate(rows, {"breast": ["exam_id", "laterality"]}, "max", n_boot=20)
    assert out["n"] == 6 and out["breast/n"] == 4
    assert out["breast/auroc"] == 1.0  # max over views rescues e1-L's missed view
    assert {"auroc_ci_low", "auroc_ci_high", "breast/auprc_ci_low"} <= set(out)
    mean = evaluate(rows, {"breast": ["exam_id", "laterality"]}, "mean")
    assert "auroc_ci_low" not in mean and mean["breast/n"] == 4
