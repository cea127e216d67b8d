"""Weighted AUROC/AP against torchmetrics, and the patient bootstrap: clusters, strata, redraws, width."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    multiclass_auroc,
    multiclass_average_precision,
)

from medconv.stats.bootstrap import cluster_bootstrap, clusters_of, draw_counts
from medconv.stats.ranking import macro, weighted_auroc, weighted_average_precision


def _data(n: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return np.round(rng.normal(size=n) + labels, 1), labels  # rounded: ties


def test_unit_weights_are_torchmetrics_auroc_and_average_precision():
    scores, labels = _data()
    s, y = torch.tensor(scores), torch.tensor(labels)
    assert weighted_auroc(scores, labels == 1)[0] == pytest.approx(float(binary_auroc(s, y)), abs=1e-6)
    assert weighted_average_precision(scores, labels == 1)[0] == pytest.approx(float(binary_average_precision(s, y)), abs=1e-6)
    rng = np.random.default_rng(1)
    probs, classes = rng.dirichlet([1, 1, 1], 90), rng.integers(0, 3, 90)
    p, c = torch.tensor(probs), torch.tensor(classes)
    assert macro(weighted_auroc, probs, classes)[0] == pytest.approx(float(multiclass_auroc(p, c, num_classes=3)), abs=1e-6)
    assert macro(weighted_average_precision, probs, classes)[0] == pytest.approx(
        float(multiclass_average_precision(p, c, num_classes=3)), abs=1e-6)


def test_integer_weights_equal_the_repeated_rows():
    scores, labels = _data(40)
    weights = np.random.default_rng(2).integers(0, 4, size=(5, 40))
    for w, auc, ap in zip(weights, weighted_auroc(scores, labels == 1, weights),
                          weighted_average_precision(scores, labels == 1, weights), strict=True):
        s, y = torch.tensor(np.repeat(scores, w)), torch.tensor(np.repeat(labels, w))
        assert auc == pytest.approx(float(binary_auroc(s, y)), abs=1e-6)
        assert ap == pytest.approx(float(binary_average_precision(s, y)), abs=1e-6)
    assert np.isnan(weighted_auroc(scores, labels == 1, (labels == 1)[None].astype(float))[0])  # no negative weighted in


def test_clusters_are_patients_with_their_highest_label():
    c = clusters_of(["p1", "p1", "p2", "", None, "p2"], [0, 1, 0, 0, 1, 0])
    assert c.codes.tolist() == [0, 0, 1, 2, 3, 1] and c.strata.tolist() == [1, 0, 0, 1] and c.resampled == "patients"
    assert clusters_of(None, [0, 1, 1]).resampled == "images" and clusters_of(["", ""], [0, 1]).count == 2


def test_draws_keep_each_stratum_size_and_move_a_patient_s_rows_together():
    c = clusters_of(["a", "a", "b", "c", "c", "d", "e"], [1, 0, 1, 0, 0, 0, 0])
    counts = draw_counts(c, 200, np.random.default_rng(0))
    assert (counts[:, c.strata == 1].sum(1) == 2).all() and (counts[:, c.strata == 0].sum(1) == 3).all()
    weights = counts[:, c.codes]
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 4]).all()


def test_patient_bootstrap_ignores_duplicated_views_that_the_image_bootstrap_counts():
    """Four identical views per patient carry the evidence of one: resampling patients gives exactly the interval of
    the single views, while resampling images treats them as four times the data and narrows it."""
    scores, labels = _data(60, seed=4)
    patients = [f"p{i}" for i in range(60)]

    def ci(s: np.ndarray, y: np.ndarray, ids: list | None) -> tuple[float, float]:
        boot = cluster_bootstrap(lambda w: {"auroc": weighted_auroc(s, y == 1, w)}, clusters_of(ids, y), 1000, seed=0)
        return boot.interval("auroc")

    single = ci(scores, labels, patients)
    views = ci(np.repeat(scores, 4), np.repeat(labels, 4), list(np.repeat(patients, 4)))
    images = ci(np.repeat(scores, 4), np.repeat(labels, 4), None)
    assert views == pytest.approx(single)
    assert images[1] - images[0] < 0.7 * (single[1] - single[0])


def test_resamples_missing_a_class_are_redrawn_and_counted():
    # Every patient has a positive image, so a resample of only p2 and p3 has no negative.
    scores, labels = np.array([0.2, 0.9, 0.8, 0.7]), np.array([0, 1, 1, 1])
    boot = cluster_bootstrap(lambda w: {"auroc": weighted_auroc(scores, labels == 1, w)},
                             clusters_of(["p1", "p1", "p2", "p3"], labels), 500, seed=0)
    assert boot.resamples == 500 and boot.degenerate > 50 and np.isfinite(boot.draws["auroc"]).all()
    assert boot.describe() == {"resampled": "patients", "clusters": 3, "resamples": 500, "degenerate": boot.degenerate}
    again = cluster_bootstrap(lambda w: {"auroc": weighted_auroc(scores, labels == 1, w)},
                              clusters_of(["p1", "p1", "p2", "p3"], labels), 500, seed=0)
    assert (again.draws["auroc"] == boot.draws["auroc"]).all()  # deterministic for a seed
