"""Attention pooling of a bag of instance features (Ilse et al. 2018, "Attention-based Deep Multiple Instance
Learning"), and the output every medconv MIL aggregator returns.

Every aggregator answers `forward(features (B, N, D), mask (B, N) bool | None, labels (B,) | None) -> MILOutput`;
padded instances (mask False) get exactly zero attention and never change the bag's output, so a padded batch
equals its bags run one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class MILOutput:
    """What a MIL aggregator returns.

    logits: (B, C) bag logits.
    attention: (B, N) float32 weights over instances, summing to 1 over a bag's real instances, 0 on padding
        (what heatmaps draw).
    instance_logits: (B, N, C) per-instance class evidence (CLAM's instance classifiers), else None.
    extra_loss: a scalar added to the bag loss in training (CLAM's instance clustering loss), else None.
    """

    logits: torch.Tensor
    attention: torch.Tensor
    instance_logits: torch.Tensor | None = None
    extra_loss: torch.Tensor | None = None


def full_mask(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`mask` as bool, or all True (an unpadded bag) when None."""
    if mask is None:
        return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return mask.bool()


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim in float32 with masked entries exactly 0 (an all-masked row is all 0, not NaN)."""
    scores = scores.float().masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0).masked_fill(~mask, 0.0)


def attention_pool(attention: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(B, N) weights x (B, N, D) instances -> (B, D) bag embedding."""
    return torch.bmm(attention.to(h.dtype).unsqueeze(1), h).squeeze(1)


class GatedAttention(nn.Module):
    """a_n = softmax_n(w^T (tanh(V h_n) * sigmoid(U h_n))), masked: the gate lets the score be non-linear in h
    without the tanh saturating it (Ilse et al. 2018, eq. 9). Returns (B, N) weights, 0 where `mask` is False."""

    def __init__(self, in_dim: int, attention_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.V = nn.Linear(in_dim, attention_dim)
        self.U = nn.Linear(in_dim, attention_dim)
        self.dropout = nn.Dropout(dropout)
        self.w = nn.Linear(attention_dim, 1)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised attention logits (B, N)."""
        gated = torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))
        return self.w(self.dropout(gated)).squeeze(-1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_softmax(self.scores(h), full_mask(h, mask))


class ABMIL(nn.Module):
    """Gated-attention MIL: project features (Linear + ReLU + dropout), pool with one gated attention branch
    shared by all classes (the attention says where the evidence is, the classifier what it says), classify.

    Args:
        in_dim: feature size D of the bags (linked from the data, or the tile encoder's width).
        num_classes: bag classes C (linked from the data).
        hidden_dim: width of the projected instances.
        attention_dim: width of the gated attention's hidden layer.
        dropout: after the projection and inside the attention.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 256, attention_dim: int = 128, dropout: float = 0.25):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attention_dim, dropout)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> MILOutput:
        h = self.project(features)
        attention = self.attention(h, mask)
        return MILOutput(logits=self.classifier(attention_pool(attention, h)), attention=attention)
