"""TransMIL (Shao et al. 2021, "TransMIL: Transformer based Correlated Multiple Instance Learning"): a class token
and two self-attention layers over the bag, with a convolutional position encoding (PPEG) in between.

Differences from the paper, on purpose:
- Attention is plain multi-head attention through `torch.nn.functional.scaled_dot_product_attention` (exact, and
  its flash / memory-efficient kernels never build the N x N matrix), not the Nystrom approximation. The kernel
  choice follows medconv's SDPA policy (`attention: auto|flash|efficient|math`, medconv.models.attention).
- The paper fills the square token grid by repeating the first tokens; here each bag is laid row-major on its own
  ceil(sqrt(n)) square, the rest of the grid is zeros, and padding never enters attention, so a padded batch
  equals each bag alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medconv.models.attention import AttentionKernel, scope_attention_kernel
from medconv.models.mil.pooling import MILOutput, full_mask, masked_softmax


class SdpaSelfAttention(nn.Module):
    """Multi-head self-attention via SDPA with a key-padding mask; on request also the first (class) token's
    attention weights averaged over heads, computed for that one query only (SDPA returns no weights)."""

    fused_attn = True  # marks it for medconv.models.attention's kernel scope

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, cls_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = None if bool(key_mask.all()) else key_mask[:, None, None, :]  # no mask: flash may run
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        weights = None
        if cls_attention:
            scores = (q[:, :, :1] @ k.transpose(-2, -1)).squeeze(2) / math.sqrt(q.shape[-1])  # B, heads, T
            weights = masked_softmax(scores, key_mask[:, None, :]).mean(1)
        return self.proj(out.transpose(1, 2).reshape(B, T, C)), weights


class TransLayer(nn.Module):
    """Pre-norm residual attention, as in TransMIL (which has no MLP block)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = SdpaSelfAttention(dim, num_heads, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, cls_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, weights = self.attn(self.norm(x), key_mask, cls_attention)
        return x + out, weights


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7x7, 5x5 and 3x3 convolutions plus identity on the token grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, C), mask (B, N) -> (B, N, C); each bag on its own square, zeros around it."""
        B, N, C = tokens.shape
        flat, side = grid_positions(mask)
        index = flat[..., None].expand(-1, -1, C)
        canvas = tokens.new_zeros(B, side * side + 1, C).scatter(1, index, tokens * mask[..., None])  # slot side²: padding
        grid = canvas[:, :-1].transpose(1, 2).reshape(B, C, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        canvas = torch.cat([grid.flatten(2).transpose(1, 2), canvas[:, -1:]], dim=1)
        return canvas.gather(1, index)


def grid_positions(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Flat index of each instance on a (side x side) canvas: bag b's real instances row-major on its own
    ceil(sqrt(n_b)) square at the top left; padding points at the extra slot side*side."""
    n = mask.sum(1)
    own = torch.ceil(torch.sqrt(n.double())).long().clamp(min=1)
    side = int(own.max()) if len(n) else 1
    rank = mask.long().cumsum(1) - 1
    flat = (rank // own[:, None]) * side + rank % own[:, None]
    return torch.where(mask, flat, side * side), side


class TransMIL(nn.Module):
    """Args:
        in_dim: feature size D (linked from the data, or the tile encoder's width).
        num_classes: bag classes C (linked from the data).
        hidden_dim: token width (the paper's 512).
        num_heads: attention heads (the paper's 8).
        dropout: after the projection and on attention weights.
        attention: SDPA kernel (auto | flash | efficient | math); flash takes no mask, so padded batches use the others.

    `attention` in the output is the class token's attention over the instances in the last layer, averaged over
    heads and renormalised over the instances (the class token's weight on itself left out).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int = 512,
        num_heads: int = 8,
        dropout: float = 0.1,
        attention: AttentionKernel = "auto",
    ):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.layer1 = TransLayer(hidden_dim, num_heads, dropout)
        self.ppeg = PPEG(hidden_dim)
        self.layer2 = TransLayer(hidden_dim, num_heads, dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, num_classes)
        scope_attention_kernel(self, attention)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> MILOutput:
        mask = full_mask(features, mask)
        h = self.project(features)
        tokens = torch.cat([self.cls_token.expand(len(h), -1, -1).to(h.dtype), h], dim=1)
        key_mask = torch.cat([mask.new_ones(len(h), 1), mask], dim=1)
        tokens, _ = self.layer1(tokens, key_mask)
        tokens = torch.cat([tokens[:, :1], self.ppeg(tokens[:, 1:], mask)], dim=1)
        tokens, weights = self.layer2(tokens, key_mask, cls_attention=True)
        attention = weights[:, 1:]
        attention = attention / attention.sum(1, keepdim=True).clamp_min(torch.finfo(attention.dtype).tiny)
        return MILOutput(logits=self.classifier(self.norm(tokens[:, 0])), attention=attention)
