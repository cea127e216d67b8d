"""Classification criteria for YAML: each an nn.Module returning a scalar, class weights given as a list."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _weight(class_weights: list[float] | None) -> torch.Tensor | None:
    return torch.tensor(class_weights, dtype=torch.float) if class_weights else None


class CrossEntropy(nn.CrossEntropyLoss):
    """`nn.CrossEntropyLoss` whose class weights are a plain list, so a config can set them."""

    def __init__(self, class_weights: list[float] | None = None, label_smoothing: float = 0.0):
        super().__init__(weight=_weight(class_weights), label_smoothing=label_smoothing)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy examples, for rare positives such as screening cancers."""

    def __init__(self, gamma: float = 2.0, class_weights: list[float] | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", _weight(class_weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        ce = F.nll_loss(log_p, target, weight=self.weight, reduction="none")
        p_t = log_p.gather(1, target[:, None]).squeeze(1).exp()
        return ((1 - p_t) ** self.gamma * ce).mean()
