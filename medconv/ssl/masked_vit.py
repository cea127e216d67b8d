"""SimMIM masked forward for ViTs with a patch embedding (timm Swin, SwinV2, PVT-v2, ViT).

A learned mask token replaces the masked tokens right after the backbone's own patch embedding (a forward
hook on `model.patch_embed`, removed after each call); the rest of timm's `forward_features` runs unchanged,
so a ViT's position embedding is added to the mask tokens as in SimMIM. Masked input pixels are zeroed first:
PVT-v2's 7x7 stride-4 stem overlaps its neighbours, and would otherwise read masked pixels into visible tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from medconv.errors import ConfigError
from medconv.models import TimmBackbone
from medconv.ssl.masking import MASK_STRIDE, grid_shape, upsample_mask

PATCH_FAMILIES = ("swin_transformer", "swin_transformer_v2", "pvt_v2", "vision_transformer")


class SimMIMEncoder(nn.Module):
    """Masked forward of a patch-embedding ViT held by reference; owns only the mask token."""

    def __init__(self, backbone: TimmBackbone, zero_masked_pixels: bool = True):
        super().__init__()
        model = backbone.model
        if backbone.family not in PATCH_FAMILIES or not hasattr(model, "patch_embed"):
            raise ConfigError(f"{backbone.name}: SimMIM masking supports {PATCH_FAMILIES}, not {backbone.family}.")
        proj = model.patch_embed.proj
        self.token_stride = int(proj.stride[0])
        if tuple(proj.stride) != (self.token_stride,) * 2 or MASK_STRIDE % self.token_stride:
            raise ConfigError(
                f"{backbone.name}: patch stride {tuple(proj.stride)} must be square and divide the {MASK_STRIDE}-px "
                "mask cell (use a patch-16 ViT, patch-4 Swin, PVT-v2)."
            )
        reductions = [info["reduction"] for info in backbone.feature_info]
        self.stride = int(reductions[-1]) if reductions else self.token_stride
        if MASK_STRIDE % self.stride:
            raise ConfigError(f"{backbone.name}: final stride {self.stride} must divide the {MASK_STRIDE}-px mask cell.")
        self.__dict__["backbone"] = backbone  # by reference: the weights stay under the backbone's keys
        self.out_channels = backbone.num_features
        self.mask_token = nn.Parameter(torch.zeros(1, 1, proj.out_channels))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.zero_masked_pixels = zero_masked_pixels  # switched off only by the test that shows why it is needed
        if backbone.img_size is not None:
            grid_shape(backbone.img_size)
            check_windows(backbone)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H/stride, W/stride) features for a (B, gh, gw) mask (True = masked)."""
        grid_shape(x.shape[-2:])
        if self.zero_masked_pixels:
            x = x * upsample_mask(~mask, x.shape[-2:]).to(x.dtype)
        model = self.backbone.model
        handle = model.patch_embed.register_forward_hook(lambda _m, _a, out: self._replace_tokens(out, mask, x.shape))
        try:
            feats = self.backbone.forward_features(x)
        finally:
            handle.remove()
        return self._to_nchw(feats, x.shape[-2] // self.stride, x.shape[-1] // self.stride)

    def _replace_tokens(self, tokens: torch.Tensor, mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        h, w = shape[-2] // self.token_stride, shape[-1] // self.token_stride
        masked = upsample_mask(mask, (h, w)).bool()  # (B, 1, h, w)
        if tokens.ndim == 4:  # NHWC (Swin, PVT-v2, dynamic-size ViT)
            masked = masked.permute(0, 2, 3, 1)
        else:  # NLC (ViT)
            masked = masked.flatten(2).transpose(1, 2)
        return torch.where(masked, self.mask_token.to(tokens.dtype), tokens)

    def _to_nchw(self, feats: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if feats.ndim == 3:  # ViT: drop class/register tokens, fold the sequence back into its grid
            feats = feats[:, getattr(self.backbone.model, "num_prefix_tokens", 0) :]
            return feats.transpose(1, 2).reshape(feats.shape[0], -1, h, w)
        if feats.shape[-2:] == (h, w) and feats.shape[1] == self.out_channels:
            return feats  # PVT-v2 ends NCHW
        return feats.permute(0, 3, 1, 2)  # Swin ends NHWC


def check_windows(backbone: TimmBackbone) -> None:
    """Swin/SwinV2: every block's attention window must tile its stage's grid (no padded windows)."""
    for name, module in backbone.model.named_modules():
        window, resolution = getattr(module, "window_size", None), getattr(module, "input_resolution", None)
        if window is None or resolution is None or not hasattr(module, "shift_size"):
            continue
        window, resolution = tuple(window), tuple(resolution)
        if any(r % win for r, win in zip(resolution, window, strict=True)):
            raise ConfigError(
                f"{backbone.name}: img_size {tuple(backbone.img_size)} gives a {resolution[0]}x{resolution[1]} token "
                f"grid at {name}, which window {window[0]}x{window[1]} does not tile; choose img_size so every stage's "
                "grid (img_size / 4, / 8, / 16, / 32) is a multiple of the window, or set model_args.window_size."
            )
