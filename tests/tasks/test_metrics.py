import math

import numpy as np

from medconv.tasks.metrics import aggregate_groups, classification_metrics, sensitivity_at_specificity


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
    # 90% specificity -> threshold at the 9th negative (0.9): positives above it are 0.97 and 0.99.
    assert sensitivity_at_specificity(scores, labels, 0.9) == 2 / 3


def test_single_class_gives_nan():
    m = classification_metrics(np.array([[0.5, 0.5], [0.4, 0.6]]), np.array([1, 1]))
    assert math.isnan(m["auroc"])
