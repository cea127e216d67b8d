"""How good is a frozen representation? k-NN and linear-probe AUROC on features, as pure tensor maths.

Two read-outs of the same frozen features, as SSL papers report them: a weighted k-NN classifier (no training,
sensitive to the feature space's geometry) and a logistic-regression probe (what a linear head could reach).
Both are deterministic on the CPU, so a probe curve over epochs reflects the encoder, not the probe's noise.
`medconv.callbacks.RepresentationProbe` extracts the features and logs these numbers during pretraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc


def knn_scores(
    train: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07
) -> torch.Tensor:
    """(Q, num_classes) class probabilities of a weighted k-NN vote, as in DINO's k-NN evaluation.

    Cosine similarity; each of the `k` nearest training points votes for its class with weight
    exp(similarity / temperature); votes are normalised to sum to 1. `temperature=inf` gives a plain majority.
    """
    if len(train) == 0 or len(query) == 0:
        raise ValueError("k-NN needs at least one training and one query feature")
    k = min(k, len(train))
    sim = F.normalize(query.double(), dim=1) @ F.normalize(train.double(), dim=1).T  # (Q, N)
    top_sim, top_idx = sim.topk(k, dim=1)
    weights = torch.ones_like(top_sim) if math.isinf(temperature) else (top_sim / temperature).exp()
    votes = torch.zeros(len(query), num_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_labels.long()[top_idx], weights)
    return (votes / votes.sum(dim=1, keepdim=True)).float()


@dataclass
class LinearProbe:
    """A logistic-regression head on standardised features (train mean and std), ready to score new features."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # (num_classes, D)
    bias: torch.Tensor  # (num_classes,)

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) softmax probabilities."""
        x = (features.double() - self.mean) / self.std
        return torch.softmax(x @ self.weight.T + self.bias, dim=1).float()


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-2, max_iter: int = 100
) -> LinearProbe:
    """Multinomial logistic regression (binary = 2 classes) by full-batch L-BFGS in float64 on the CPU.

    Loss: mean cross-entropy + weight_decay / 2 * ||W||^2 (bias not decayed). The L2 term keeps the optimum finite
    when the classes are separable, which they usually are with more feature dimensions than samples. Starting
    from zeros with a deterministic optimiser, the same features always give the same probe.
    """
    x = features.detach().double().cpu()
    y = labels.detach().long().cpu()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach())


def auroc(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Binary AUROC of class 1's probability, or macro one-vs-rest AUROC over the classes present in `labels`;
    NaN when `labels` hold one class only."""
    labels = labels.long().cpu()
    probs = probs.float().cpu()
    if labels.unique().numel() < 2:
        return float("nan")
    if num_classes == 2:
        return float(binary_auroc(probs[:, 1], labels))
    per_class = multiclass_auroc(probs, labels, num_classes=num_classes, average=None)
    present = torch.bincount(labels, minlength=num_classes)[:num_classes] > 0  # a class absent from `labels` has no AUROC
    return float(per_class[present].mean())


def probe_aurocs(
    train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07, weight_decay: float = 1e-2, max_iter: int = 100,
) -> dict[str, float]:
    """`knn_auroc` and `linear_auroc` of val features, with the train features as the labelled reference."""
    knn = knn_scores(train, train_labels, val, num_classes, k, temperature)
    probe = fit_linear_probe(train, train_labels, num_classes, weight_decay, max_iter)
    return {"knn_auroc": auroc(knn, val_labels, num_classes), "linear_auroc": auroc(probe.predict_proba(val), val_labels, num_classes)}
