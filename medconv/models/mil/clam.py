"""CLAM-SB (Lu et al. 2021, "Data-efficient and weakly supervised computational pathology on whole-slide images"):
gated-attention MIL plus instance-level clustering, which gives the instance features a supervised signal from
slide labels alone — what makes CLAM data-efficient.

This is the single-branch (SB) variant: one attention branch shared by all classes, and one binary instance
classifier per class. For a slide of class c, the k instances with the highest attention are pseudo-labelled
"evidence of c" and the k with the lowest "not evidence of c", and classifier c learns them (the paper's in-class
clustering). With `subtyping` (mutually exclusive subtypes, no "normal" class) the top-k of every other class's
classifier are also pseudo-labelled negative (the paper's out-of-class term), averaged over classes. The instance
loss is cross-entropy (the paper's default is a smooth top-1 SVM; its code offers both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medconv.models.mil.pooling import GatedAttention, MILOutput, attention_pool, full_mask


class CLAMSB(nn.Module):
    """Args:
        in_dim: feature size D (linked from the data, or the tile encoder's width).
        num_classes: bag classes C (linked from the data).
        hidden_dim, attention_dim, dropout: as in `ABMIL` (CLAM's "small" size is 512 / 256).
        k_sample: instances pseudo-labelled at each end of the attention ranking (fewer in bags under 2k).
        subtyping: also push other classes' top-k to negative (see the module docstring).

    `instance_logits[b, n, c]` is the log-odds from classifier c that tile n is evidence of class c: per-tile
    scores for heatmaps. `extra_loss` (the instance loss) is given when `labels` are passed.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.25,
        k_sample: int = 8,
        subtyping: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.k_sample = k_sample
        self.subtyping = subtyping
        self.project = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attention_dim, dropout)
        self.classifier = nn.Linear(hidden_dim, num_classes)
        self.instance_classifiers = nn.Linear(hidden_dim, num_classes * 2)  # C binary classifiers in one layer

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> MILOutput:
        mask = full_mask(features, mask)
        h = self.project(features)
        attention = self.attention(h, mask)
        logits = self.classifier(attention_pool(attention, h))
        pairs = self.instance_classifiers(h).float().unflatten(-1, (self.num_classes, 2))  # B, N, C, 2
        instance_logits = (pairs[..., 1] - pairs[..., 0]).masked_fill(~mask[..., None], 0.0)
        extra = None if labels is None else self.instance_loss(attention, pairs, mask, labels)
        return MILOutput(logits=logits, attention=attention, instance_logits=instance_logits, extra_loss=extra)

    def instance_loss(self, attention: torch.Tensor, pairs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Mean over bags of the clustering loss; None when no bag has two real instances."""
        losses = []
        for b in range(len(labels)):
            k = min(self.k_sample, int(mask[b].sum()) // 2)
            if k == 0:
                continue
            top = attention[b].masked_fill(~mask[b], float("-inf")).topk(k).indices
            bottom = attention[b].masked_fill(~mask[b], float("inf")).topk(k, largest=False).indices
            label = int(labels[b])
            ones, zeros = torch.ones(k, dtype=torch.long, device=pairs.device), torch.zeros(k, dtype=torch.long, device=pairs.device)
            bag = F.cross_entropy(pairs[b, torch.cat([top, bottom]), label], torch.cat([ones, zeros]))
            if self.subtyping:
                for c in range(self.num_classes):
                    if c != label:
                        bag = bag + F.cross_entropy(pairs[b, top, c], zeros)
                bag = bag / self.num_classes
            losses.append(bag)
        return torch.stack(losses).mean() if losses else None
