"""DeLong's test against a 3x3 example worked by hand and against the O(mn) placement-value definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medconv.stats.bootstrap import cluster_bootstrap, clusters_of
from medconv.stats.compare import compare_aurocs
from medconv.stats.delong import auroc_covariance, delong_test, midranks, placements
from medconv.stats.ranking import weighted_auroc

# Three positives then three negatives, two readers (a, b) of the same six cases.
LABELS = np.array([1, 1, 1, 0, 0, 0])
A = np.array([0.9, 0.6, 0.4, 0.5, 0.4, 0.1])
B = np.array([0.8, 0.3, 0.7, 0.2, 0.6, 0.5])


def slow_delong(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) as written: psi over every (positive, negative) pair, placement values, their sample
    covariances S10 / m + S01 / n."""
    pos, neg = scores[:, labels == 1], scores[:, labels == 0]
    m, n = pos.shape[1], neg.shape[1]
    psi = np.zeros((len(scores), m, n))
    for r in range(len(scores)):
        for i in range(m):
            for j in range(n):
                psi[r, i, j] = 1.0 if pos[r, i] > neg[r, j] else 0.5 if pos[r, i] == neg[r, j] else 0.0
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return psi.mean(axis=(1, 2)), np.cov(v10) / m + np.cov(v01) / n


def test_midranks_share_tied_ranks():
    assert midranks(np.array([0.4, 0.1, 0.4, 0.9])).tolist() == [2.5, 1.0, 2.5, 4.0]


def test_hand_worked_example():
    # Placement values, by hand. a: positives beat [3, 3, 1.5] of 3 negatives -> V10 = [1, 1, 1/2], AUC 5/6;
    # negatives are beaten by [2, 2.5, 3] of 3 positives -> V01 = [2/3, 5/6, 1].
    # b: V10 = [1, 1/3, 1], V01 = [1, 2/3, 2/3], AUC 7/9.
    # var(a) = S10/3 + S01/3 = (1/12)/3 + (1/36)/3 = 1/27; var(b) = (4/27)/3 + (1/27)/3 = 5/81;
    # cov(a, b) = (-1/18)/3 + (-1/36)/3 = -1/36; var(a - b) = 1/27 + 5/81 + 2/36 = 25/162.
    aucs, v10, v01 = placements(np.stack([A, B]), LABELS)
    assert v10 == pytest.approx(np.array([[1, 1, 1 / 2], [1, 1 / 3, 1]]))
    assert v01 == pytest.approx(np.array([[2 / 3, 5 / 6, 1], [1, 2 / 3, 2 / 3]]))
    aucs, cov = auroc_covariance(np.stack([A, B]), LABELS)
    assert aucs == pytest.approx([5 / 6, 7 / 9])
    assert cov == pytest.approx(np.array([[1 / 27, -1 / 36], [-1 / 36, 5 / 81]]))
    result = delong_test(A, B, LABELS)
    se = math.sqrt(25 / 162)
    assert result.diff == pytest.approx(1 / 18) and result.se == pytest.approx(se)
    assert result.z == pytest.approx(math.sqrt(2) / 10)  # (1/18) / (5 / sqrt(162))
    assert result.p == pytest.approx(2 * stats.norm.sf(math.sqrt(2) / 10)) and result.p == pytest.approx(0.88754, abs=1e-5)
    assert (result.ci_low, result.ci_high) == pytest.approx((1 / 18 - 1.959964 * se, 1 / 18 + 1.959964 * se), abs=1e-6)


def test_fast_midrank_version_matches_the_definition_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=(3, 60)) + labels * np.array([[1.0], [0.5], [0.0]]), 1)  # coarse: many ties
    aucs, cov = auroc_covariance(scores, labels)
    slow_aucs, slow_cov = slow_delong(scores, labels)
    assert aucs == pytest.approx(slow_aucs) and cov == pytest.approx(slow_cov)
    assert aucs == pytest.approx([weighted_auroc(s, labels == 1)[0] for s in scores])


def test_identical_readers_do_not_differ():
    result = delong_test(A, A, LABELS)
    assert result.diff == 0 and result.se == 0 and result.p == 1.0


def test_delong_se_agrees_with_the_bootstrap_on_independent_images():
    """With one image per patient, the paired bootstrap's spread of the difference estimates the same standard
    error as DeLong's formula (both are estimates: agreement within 10% at n = 400)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    truth = rng.normal(size=400) + labels
    a, b = truth + rng.normal(0, 0.5, 400), truth + rng.normal(0, 1.0, 400)
    result = delong_test(a, b, labels)
    boot = cluster_bootstrap(lambda w: {"d": weighted_auroc(a, labels == 1, w) - weighted_auroc(b, labels == 1, w)},
                             clusters_of(None, labels), 2000, seed=1)
    assert boot.draws["d"].std(ddof=1) == pytest.approx(result.se, rel=0.1)
    assert result.p < 0.05  # the less noisy reader is better
    both = compare_aurocs(a, b, labels, n_boot=2000)
    assert both["diff"] == pytest.approx(result.diff) and both["delong_p"] == pytest.approx(result.p)
    assert both["boot_ci_low"] > 0 and both["resampled"] == "images" and both["resamples"] == 2000
