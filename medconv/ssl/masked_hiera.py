"""Hiera's own MAE-style masked forward: masked mask units are dropped, not tokenised.

timm's Hiera takes `mask` (B, #units) with 1 = keep; its patch embedding zeroes the masked pixels before the
overlapping 7x7 stem, and the unrolled tokens of masked units are discarded. The stride-32 mask grid maps onto
mask units of `patch_stride * mask_unit_size` pixels (32 for every timm Hiera): equal sizes map one to one,
finer units (dividing 32) repeat each cell over the units inside it, and coarser units cannot express the
mask, so they are a config error. The visible units' final-stage features are put back on the full grid with
zeros at the dropped units, as the sparse CNNs leave them: the decoder fills them with its mask token.
"""

from __future__ import annotations

import math

import torch
from timm.models.hiera import undo_windowing
from torch import nn

from medconv.errors import ConfigError
from medconv.models import TimmBackbone
from medconv.ssl.masking import MASK_STRIDE, grid_shape


class HieraMaskedEncoder(nn.Module):
    """Masked forward of a timm Hiera held by reference; owns no parameters."""

    def __init__(self, backbone: TimmBackbone):
        super().__init__()
        model = backbone.model
        if backbone.family != "hiera":
            raise ConfigError(f"{backbone.name}: not a Hiera model ({backbone.family}).")
        unit_px = tuple(int(s * u) for s, u in zip(model.patch_stride, model.mask_unit_size, strict=True))
        if unit_px[0] != unit_px[1] or MASK_STRIDE % unit_px[0]:
            raise ConfigError(
                f"{backbone.name}: mask units of {unit_px[0]}x{unit_px[1]} px (patch_stride x mask_unit_size) must be "
                f"square and divide the {MASK_STRIDE}-px mask cell; set model_args.mask_unit_size to "
                f"{MASK_STRIDE // int(model.patch_stride[0])} tokens."
            )
        self.unit_repeat = MASK_STRIDE // unit_px[0]  # mask units per mask cell, per side
        self.stride = int(model.patch_stride[0]) * int(model.q_stride[0]) ** int(model.q_pool)
        if self.stride != MASK_STRIDE:
            raise ConfigError(f"{backbone.name}: final stride {self.stride}, masked modelling needs {MASK_STRIDE}.")
        self.__dict__["backbone"] = backbone
        self.out_channels = backbone.num_features
        if backbone.img_size is not None:
            grid_shape(backbone.img_size)

    def keep_units(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, gh, gw) masked cells -> timm's (B, #units) keep mask, units in row-major order."""
        r = self.unit_repeat
        units = mask.repeat_interleave(r, dim=1).repeat_interleave(r, dim=2) if r > 1 else mask
        expected = list(self.backbone.model.mask_spatial_shape)
        if list(units.shape[-2:]) != expected:
            raise ConfigError(
                f"{self.backbone.name}: a {mask.shape[-2] * MASK_STRIDE}x{mask.shape[-1] * MASK_STRIDE} input does not "
                f"match the {expected} mask units it was built for; link img_size to the data's image size."
            )
        return ~units.flatten(1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H/32, W/32) final features; dropped units read 0."""
        grid_shape(x.shape[-2:])
        model = self.backbone.model
        keep = self.keep_units(mask)
        last = len(model.stage_ends) - 1
        with self.backbone._kernel():
            feats = model.forward_intermediates(
                self.backbone._prepare(x), mask=keep, indices=[last], output_fmt="NHWC", intermediates_only=True
            )[-1]  # (B, #visible units, mu_h, mu_w, C)
        b, _, mu_h, mu_w, c = feats.shape
        full = feats.new_zeros(b, keep.shape[1], mu_h, mu_w, c)
        full[keep] = feats.reshape(-1, mu_h, mu_w, c)
        size = model.reroll.schedule[model.stage_ends[last]][1]
        grid = undo_windowing(full, list(size), [mu_h, mu_w])  # (B, H/32, W/32, C)
        if math.prod(grid.shape[1:3]) != (x.shape[-2] // self.stride) * (x.shape[-1] // self.stride):
            raise RuntimeError("Hiera reroll did not return the final-stage grid")
        return grid.permute(0, 3, 1, 2)
