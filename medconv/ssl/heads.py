"""Projection heads for joint-embedding objectives: they live on the objective, never inside the backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear layer to `out_dim` prototypes (DINO).

    The last layer's weight rows are normalised on every forward (weight norm with the gain fixed at 1, DINO's
    `norm_last_layer`), written as plain `F.normalize` so the head deep-copies and pickles like any module
    (torch's parametrised weight norm does not survive `copy.deepcopy` of every version).
    """

    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256, n_layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_weight = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last_weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) pooled features -> (B, out_dim) logits (before temperature)."""
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.last_weight, dim=-1))
