"""Probe maths: k-NN votes and the logistic-regression probe on cases small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch

from medconv.ssl.probe import auroc, fit_linear_probe, knn_scores, probe_aurocs


def test_knn_weighted_votes_match_a_hand_computed_case() -> None:
    # Four reference points on the unit circle; the query at 0 degrees has cosine similarities 1, 0.6, 0, -1 with them.
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[2.0, 0.0]])  # length does not matter: cosine
    probs = knn_scores(train, labels, query, num_classes=2, k=3, temperature=0.5)
    w0, w1 = math.exp(1 / 0.5), math.exp(0.6 / 0.5) + math.exp(0 / 0.5)  # neighbours: #0 (class 0), #1 and #2 (class 1)
    assert probs[0].tolist() == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1)], rel=1e-6)
    # A plain majority (infinite temperature) of the same 3 neighbours: 1 vote against 2.
    majority = knn_scores(train, labels, query, num_classes=2, k=3, temperature=math.inf)
    assert majority[0].tolist() == pytest.approx([1 / 3, 2 / 3])
    # k larger than the reference set is capped: all four vote.
    assert knn_scores(train, labels, query, 2, k=10, temperature=math.inf)[0].tolist() == pytest.approx([0.5, 0.5])


def test_separable_points_give_auroc_one_and_flipped_labels_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    # Two clusters along the first axis, noise along the second: separable, and by direction too (for cosine k-NN).
    train = torch.cat([torch.randn(20, 2, generator=gen) * 0.3 + torch.tensor([3.0, 0.0]),
                       torch.randn(20, 2, generator=gen) * 0.3 + torch.tensor([-3.0, 0.0])])
    labels = torch.tensor([1] * 20 + [0] * 20)
    val = torch.tensor([[2.5, 0.4], [3.5, -0.2], [-2.8, 0.1], [-3.1, -0.5]])
    val_labels = torch.tensor([1, 1, 0, 0])
    scores = probe_aurocs(train, labels, val, val_labels, num_classes=2, k=5)
    assert scores == {"knn_auroc": 1.0, "linear_auroc": 1.0}
    assert probe_aurocs(train, labels, val, 1 - val_labels, num_classes=2, k=5) == {"knn_auroc": 0.0, "linear_auroc": 0.0}


def test_linear_probe_learns_the_informative_direction_and_is_deterministic() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=gen) * torch.tensor([1.0, 100.0, 1.0, 0.01, 1.0])  # scales differ wildly
    y = (x[:, 3] > 0).long()  # only the tiny-scale feature carries the label: standardisation must find it
    probe = fit_linear_probe(x, y, num_classes=2)
    # Training accuracy measured 0.970-0.995 over generator seeds 1-10 (float64 L-BFGS; unchanged with AVX2 or baseline
    # kernels in place of AVX-512); a probe on unstandardised features scores 0.55, so 0.9 tells them apart with margin.
    assert probe.predict_proba(x).argmax(1).eq(y).float().mean() > 0.9
    # The decision direction (class 1 minus class 0 weights) is dominated by feature 3.
    direction = (probe.weight[1] - probe.weight[0]).abs()
    assert direction.argmax() == 3 and direction[3] > 5 * direction[[0, 1, 2, 4]].max()
    again = fit_linear_probe(x, y, num_classes=2)
    assert torch.equal(probe.weight, again.weight) and torch.equal(probe.bias, again.bias)
    # Stronger weight decay shrinks the weights (the L2 term is active).
    assert fit_linear_probe(x, y, 2, weight_decay=1.0).weight.norm() < probe.weight.norm()


def test_multiclass_macro_auroc_and_single_class_nan() -> None:
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    gen = torch.Generator().manual_seed(2)
    train_labels = torch.arange(3).repeat(10)
    train = centres[train_labels] + torch.randn(30, 3, generator=gen) * 0.5
    val_labels = torch.tensor([0, 1, 2, 2, 1, 0])
    val = centres[val_labels] + torch.randn(6, 3, generator=gen) * 0.5
    assert probe_aurocs(train, train_labels, val, val_labels, num_classes=3) == {"knn_auroc": 1.0, "linear_auroc": 1.0}
    # One-vs-rest for class 0 only wrong (class 0 scored lowest): macro AUROC is the mean of 0, 1, 1.
    probs = torch.tensor([[0.0, 0.5, 0.5], [0.4, 0.6, 0.0], [0.4, 0.0, 0.6]])
    assert auroc(probs, torch.tensor([0, 1, 2]), 3) == pytest.approx((0 + 1 + 1) / 3)
    # A declared class that the set does not contain has no AUROC and does not drag the mean down.
    with_absent = torch.cat([probs, torch.zeros(3, 1)], dim=1)
    assert auroc(with_absent, torch.tensor([0, 1, 2]), 4) == pytest.approx((0 + 1 + 1) / 3)
    assert math.isnan(auroc(torch.tensor([[0.2, 0.8], [0.6, 0.4]]), torch.tensor([1, 1]), 2))
