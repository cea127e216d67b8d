"""Masked image modelling for every family: one stride-32 mask, a family-specific masked forward, a pixel loss.

CNNs (ConvNeXt, ResNet-D, GResNet) run sparse (SparK), patch-embedding ViTs (Swin, SwinV2, PVT-v2, ViT) get
SimMIM's mask token, Hiera drops masked units (MAE). The decoder predicts every pixel; the loss (L1 or MSE, on
per-cell normalised pixels by default) covers masked pixels only. Only the backbone is exported: the mask
tokens and the decoder live here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from medconv import keys
from medconv.errors import ConfigError
from medconv.models import TimmBackbone
from medconv.ssl.decoders import LightDecoder, UNetDecoder
from medconv.ssl.masked_hiera import HieraMaskedEncoder
from medconv.ssl.masked_vit import PATCH_FAMILIES, SimMIMEncoder
from medconv.ssl.masking import MASK_STRIDE, grid_shape, mask_to_pixels, num_masked, patchify, random_grid_mask, unpatchify, upsample_mask
from medconv.ssl.sparse_cnn import SPARSE_FAMILIES, SparseCNNEncoder

NORM_PIX_EPS = 1e-6
_HEAD_PREFIXES = ("head.", "fc_norm.")  # timm's pooled-head modules: not on the masked (unpooled) path


def build_masked_encoder(backbone: TimmBackbone) -> nn.Module:
    """The masked forward that fits the backbone's family."""
    family = backbone.family
    if family in SPARSE_FAMILIES:
        return SparseCNNEncoder(backbone)
    if family in PATCH_FAMILIES:
        return SimMIMEncoder(backbone)
    if family == "hiera":
        return HieraMaskedEncoder(backbone)
    raise ConfigError(
        f"{backbone.name}: no masked forward for the {family!r} family; supported: "
        f"{', '.join(SPARSE_FAMILIES + PATCH_FAMILIES + ('hiera',))}."
    )


def normalise_patches(image: torch.Tensor, patch: int = MASK_STRIDE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's norm_pix target: each cell (all channels) to zero mean, unit (unbiased) variance.

    Returns the normalised image and the per-cell mean and std as (B, gh, gw, 1), to undo it for previews.
    """
    cells = patchify(image.float(), patch)
    mean = cells.mean(dim=-1, keepdim=True)
    std = (cells.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
    return unpatchify((cells - mean) / std, image.shape[1], patch), mean, std


def masked_pixel_loss(pred: torch.Tensor, target: torch.Tensor, mask_px: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean L1 or squared error over masked pixels and channels; `mask_px` (B, 1, H, W), 1 = masked."""
    diff = pred.float() - target.float()
    err = diff.abs() if loss == "l1" else diff.square()
    return (err * mask_px).sum() / (mask_px.sum() * pred.shape[1])


class MaskedImageModelling(nn.Module):
    """Masked image modelling objective over any supported TimmBackbone; forward returns the loss.

    Args:
        backbone: the encoder to pretrain (exported by `export_encoder`).
        mask_ratio: fraction of stride-32 cells masked per image (exact count, rounded).
        decoder: "light" (1x1 conv + PixelShuffle; after sparse CNNs and Hiera, two 3x3 convs over the final grid
            first, with a mask token in the masked cells) or "unet" (CNNs: a small UNet over the sparse stages).
        loss: "l1" or "mse", over masked pixels only.
        norm_pix: predict per-cell normalised pixels (MAE's norm_pix_loss) instead of the image itself.
        decoder_width: channels of the light decoder's context convs and of the UNet decoder's deepest level.
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        mask_ratio: float = 0.6,
        decoder: Literal["light", "unet"] = "light",
        loss: Literal["l1", "mse"] = "l1",
        norm_pix: bool = True,
        decoder_width: int = 128,
    ):
        super().__init__()
        if loss not in ("l1", "mse"):
            raise ConfigError(f"MaskedImageModelling: loss must be 'l1' or 'mse'; got {loss!r}.")
        if decoder not in ("light", "unet"):
            raise ConfigError(f"MaskedImageModelling: decoder must be 'light' or 'unet'; got {decoder!r}.")
        num_masked(4, mask_ratio)  # validates the ratio now, not at the first batch
        self.backbone = backbone
        self.mask_ratio, self.loss_name, self.norm_pix, self.decoder_name = mask_ratio, loss, norm_pix, decoder
        self.encoder = build_masked_encoder(backbone)
        # the pooled head's norm (ConvNeXt, Hiera) is outside forward_features: frozen, so DDP finds no unused
        # parameters; it is exported unchanged and a fine-tune builds a fresh, trainable backbone from the file
        for name, param in backbone.model.named_parameters():
            if name.startswith(_HEAD_PREFIXES):
                param.requires_grad_(False)
        self.in_chans = next(m for m in backbone.model.modules() if isinstance(m, nn.Conv2d)).in_channels
        if decoder == "light":  # masked cells carry no context after sparse CNNs and Hiera: 3x3 convs supply it
            context = None if isinstance(self.encoder, SimMIMEncoder) else decoder_width
            self.decoder = LightDecoder(self.encoder.out_channels, self.in_chans, self.encoder.stride, context)
        else:
            if not isinstance(self.encoder, SparseCNNEncoder):
                raise ConfigError(f"{backbone.name}: decoder 'unet' needs a CNN backbone ({SPARSE_FAMILIES}); use 'light'.")
            stages = [i for i, info in enumerate(backbone.feature_info) if info["reduction"] >= 4]
            self.unet_indices = stages
            self.decoder = UNetDecoder(
                [backbone.feature_info[i]["num_chs"] for i in stages],
                [backbone.feature_info[i]["reduction"] for i in stages],
                self.in_chans,
                decoder_width,
            )

    def export_encoder(self) -> TimmBackbone:
        return self.backbone

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Draws a fresh mask per image (the global RNG) and returns loss, mask, reconstruction and target."""
        image = batch[keys.IMAGE]
        mask = random_grid_mask(image.shape[0], grid_shape(image.shape[-2:]), self.mask_ratio, device=image.device)
        return self.forward_masked(image, mask)

    def predict(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The decoder's (B, C, H, W) prediction for a (B, gh, gw) mask (True = masked)."""
        if self.decoder_name == "unet":
            feats = self.encoder.pyramid(image, mask, self.unet_indices)
            visible = [upsample_mask(~mask, f.shape[-2:]).to(f.dtype) for f in feats]
            return self.decoder(feats, visible)
        feats = self.encoder(image, mask)
        visible = None if isinstance(self.encoder, SimMIMEncoder) else upsample_mask(~mask, feats.shape[-2:]).to(feats.dtype)
        return self.decoder(feats, visible)

    def forward_masked(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The objective for a given mask; `forward` draws it."""
        pred = self.predict(image, mask)
        mask_px = mask_to_pixels(mask).to(image.device)
        if self.norm_pix:
            target, mean, std = normalise_patches(image)
        else:
            target = image
        loss = masked_pixel_loss(pred, target, mask_px, self.loss_name)
        with torch.no_grad():
            recon = pred.detach().float()
            if self.norm_pix:  # back to the image's space, with the true cell statistics (as MAE's previews)
                recon = unpatchify(patchify(recon) * std + mean, image.shape[1])
        return {"loss": loss, "mask": mask_px, "reconstruction": recon.to(image.dtype), "target": image.detach()}
