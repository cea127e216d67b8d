"""Pixel decoders for masked image modelling: light (SimMIM) and a small UNet over a CNN's stages (SparK)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LightDecoder(nn.Module):
    """SimMIM's head: a 1x1 conv to stride^2 * C values per cell, then PixelShuffle(stride).

    With `context_width`, two 3x3 convs on the final-stage grid come first, after a learned mask token fills the
    masked cells (`visible` given): encoders that leave masked cells empty (sparse CNNs) or constant (Hiera's
    dropped units) give a 1x1 head nothing to tell one masked cell from another, so it could only learn the mean.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, context_width: int | None = None):
        super().__init__()
        self.mask_token: nn.Parameter | None = None
        self.context: nn.Module = nn.Identity()
        if context_width:
            self.mask_token = nn.Parameter(torch.zeros(1, in_channels, 1, 1))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
            self.context = nn.Sequential(
                nn.Conv2d(in_channels, context_width, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(context_width, context_width, 3, padding=1),
                nn.GELU(),
            )
            in_channels = context_width
        self.proj = nn.Conv2d(in_channels, out_channels * stride * stride, kernel_size=1)
        self.shuffle = nn.PixelShuffle(stride)

    def forward(self, feats: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """`visible` (B, 1, h, w), 1 at visible cells: masked cells get the mask token (context decoders only)."""
        if self.mask_token is not None and visible is not None:
            feats = feats * visible + self.mask_token.to(feats.dtype) * (1 - visible)
        return self.shuffle(self.proj(self.context(feats)))


class _UpBlock(nn.Module):
    """x2 upsample, concat the (mask-filled) skip, two 3x3 conv-BN-GELU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.body(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Decodes the sparse stages of a CNN, deepest first: masked positions of every stage's map are filled with
    a learned per-stage mask token (SparK's densifying step), then upsampled and merged to the shallowest kept
    stage, and a light head finishes at pixel resolution.

    Args:
        channels: channels of the stages used, shallow to deep.
        reductions: their strides in pixels, shallow to deep (each twice the previous one).
        out_channels: image channels to predict.
        width: decoder channels at the deepest stage, halved per level (at least 16).
    """

    def __init__(self, channels: list[int], reductions: list[int], out_channels: int, width: int = 128):
        super().__init__()
        if any(b != 2 * a for a, b in zip(reductions, reductions[1:], strict=False)):
            raise ValueError(f"UNet decoder needs stages that halve the resolution each time; got strides {reductions}")
        self.reductions = list(reductions)
        self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in channels])
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02)
        widths = [max(16, width >> i) for i in range(len(channels))][::-1]  # shallow to deep
        self.stem = nn.Conv2d(channels[-1], widths[-1], 1)
        self.ups = nn.ModuleList(
            _UpBlock(widths[i + 1], channels[i], widths[i]) for i in reversed(range(len(channels) - 1))
        )
        self.head = LightDecoder(widths[0], out_channels, reductions[0])

    def forward(self, feats: list[torch.Tensor], visible: list[torch.Tensor]) -> torch.Tensor:
        """`feats` shallow to deep; `visible[i]` (B, 1, h_i, w_i) is 1 at visible positions of stage i."""
        filled = [f * v + t.to(f.dtype) * (1 - v) for f, v, t in zip(feats, visible, self.mask_tokens, strict=True)]
        x = self.stem(filled[-1])
        for up, skip in zip(self.ups, reversed(filled[:-1]), strict=True):
            x = up(x, skip)
        return self.head(x)
