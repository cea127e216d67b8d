import math

import numpy as np
import pytest

from medconv.tasks.metrics import aggregate_groups, bootstrap_ci, classification_metrics, evaluate, evaluate_report
from medconv.tasks.subgroups import subgroup_metrics


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
        low, high = ci.intervals[name]
        assert 0 <= low < point[name] < high <= 1
    assert ci == bootstrap_ci(probs, labels, n_boot=300, seed=1)
    assert ci.info == {"resampled": "images", "clusters": 40, "resamples": 300, "degenerate": 0}
    assert bootstrap_ci(probs, np.ones(40, int), n_boot=10).intervals == {}


def test_separable_scores_have_a_degenerate_interval():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert bootstrap_ci(np.stack([1 - scores, scores], 1), labels, n_boot=50).intervals["auroc"] == (1.0, 1.0)


def _screening(n_patients: int = 40, seed: int = 0) -> dict:
    """Four views per patient; a patient's views share its score (plus a little noise), a positive patient has
    one positive breast (two positive views)."""
    rng = np.random.default_rng(seed)
    sick = rng.uniform(size=n_patients) < 0.3
    level = rng.normal(size=n_patients) + 0.8 * sick
    labels = np.concatenate([[int(s), int(s), 0, 0] for s in sick])
    scores = 1 / (1 + np.exp(-(np.repeat(level, 4) + 0.1 * rng.normal(size=4 * n_patients) + 0.5 * labels)))
    return {"probs": np.stack([1 - scores, scores], 1), "labels": labels,
            "patient_id": [f"p{i}" for i in range(n_patients) for _ in range(4)],
            "exam_id": [f"p{i}" for i in range(n_patients) for _ in range(4)], "laterality": ["L", "L", "R", "R"] * n_patients,
            "density": [("A", "B", "C")[i % 3] for i in range(n_patients) for _ in range(4)]}


def test_report_resamples_patients_and_is_wider_than_an_image_bootstrap():
    rows = _screening()
    by_patient = evaluate_report(rows, {"breast": ["exam_id", "laterality"]}, n_boot=500)
    by_image = evaluate_report({k: rows[k] for k in ("probs", "labels")}, n_boot=500)
    assert by_patient.bootstrap["image"] == {"resampled": "patients", "clusters": 40, "resamples": 500, "degenerate": 0}
    assert by_patient.bootstrap["breast"]["resampled"] == "patients" and by_patient.bootstrap["breast"]["clusters"] == 40
    assert by_image.bootstrap["image"]["resampled"] == "images" and by_image.bootstrap["image"]["clusters"] == 160
    width = {name: r.metrics["auroc_ci_high"] - r.metrics["auroc_ci_low"] for name, r in (("patient", by_patient), ("image", by_image))}
    assert width["patient"] > 1.3 * width["image"]  # four correlated views are not four patients
    assert by_patient.metrics["auroc"] == by_image.metrics["auroc"]
    assert {"ece", "ece_adaptive", "brier", "breast/ece"} <= set(by_patient.metrics)


def test_subgroups_get_their_own_intervals_and_small_ones_a_note():
    rows = _screening(60, seed=2)
    groups = subgroup_metrics(rows, "density", n_boot=200)
    assert set(groups) == {"A", "B", "C"} and sum(g["n"] for g in groups.values()) == 240
    for value, group in groups.items():
        index = [i for i, d in enumerate(rows["density"]) if d == value]
        assert group["auroc"] == pytest.approx(classification_metrics(rows["probs"][index], rows["labels"][index])["auroc"])
        assert group["patients"] == 20 and group["bootstrap"]["resampled"] == "patients"
        assert group["auroc_ci_low"] <= group["auroc"] <= group["auroc_ci_high"]
    few = {k: (v[:20] if k != "density" else ["x"] * 20) for k, v in rows.items()}
    few["labels"] = np.array([1, 1] + [0] * 18)
    small = subgroup_metrics(few, "density", n_boot=200)["x"]
    assert "auroc" in small and "auroc_ci_low" not in small and "2 image(s)" in small["note"]
    one_class = subgroup_metrics(few | {"labels": np.zeros(20, int)}, "density", n_boot=200)["x"]
    assert "auroc" not in one_class and one_class["note"].startswith("one class")


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


def test_a_group_named_image_keeps_the_rows_own_metrics():
    """A patch classifier's rows are patches and its group `image` their images: both levels are reported."""
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    rows = {"probs": probs, "labels": np.array([0, 1, 0, 1]), "image_id": ["a", "a", "b", "b"]}
    report = evaluate_report(rows, {"image": ["image_id"]})
    assert report.metrics["auroc"] == pytest.approx(0.75) and report.metrics["n"] == 4  # per patch
    assert report.metrics["image/n"] == 2  # per image (max over its patches): both images positive, one class only
