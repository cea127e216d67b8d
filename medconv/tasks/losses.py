"""Classification losses; each an nn.Module returning a scalar."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy examples, for rare positives such as screening cancers."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        ce = F.nll_loss(log_p, target, weight=self.weight, reduction="none")
        p_t = log_p.gather(1, target[:, None]).squeeze(1).exp()
        return ((1 - p_t) ** self.gamma * ce).mean()


def make_loss(name: str, class_weights: list[float] | None, label_smoothing: float, focal_gamma: float) -> nn.Module:
    weight = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(gamma=focal_gamma, weight=weight)
    raise ValueError(f"loss must be 'ce' or 'focal', not {name!r}")
