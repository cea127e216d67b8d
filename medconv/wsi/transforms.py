"""H&E tile augmentation and normalisation.

Tissue has no orientation, so all eight flips/90° rotations are free; what varies between labs and
scanners is stain (haematoxylin/eosin amounts), colour balance and focus — those are what we jitter.
Albumentations applies one draw to the image and its mask alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

IMAGENET_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN  # timm's, so stats travel with the weights
IMAGENET_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD


@dataclass
class HEAugment:
    """Strengths of each augmentation; set a field to 0 (or False) to switch it off."""

    flips: bool = True  # horizontal + vertical flips
    rotate90: bool = True
    stain: float = 0.5  # probability of an HED stain perturbation (albumentations' HEStain)
    stain_scale: float = 0.2  # stain intensities scaled by 1 ± this
    stain_shift: float = 0.1  # and shifted by ± this
    color: float = 0.1  # brightness/contrast/saturation jitter (± fraction); hue gets half of it
    color_p: float = 0.5
    blur: float = 0.1  # probability of a slight Gaussian blur (focus variation)


def he_train_transforms(aug: HEAugment | None = None, seed: int = 0) -> A.Compose:
    """uint8 RGB (H, W, 3) in, same shape and dtype out; a `mask` passed along gets the same geometry."""
    aug = aug or HEAugment()
    ops: list[A.BasicTransform] = []
    if aug.flips:
        ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if aug.rotate90:
        ops.append(A.RandomRotate90(p=1.0))
    if aug.stain:
        ops.append(
            A.HEStain(
                method="random_preset",
                intensity_scale_range=(1 - aug.stain_scale, 1 + aug.stain_scale),
                intensity_shift_range=(-aug.stain_shift, aug.stain_shift),
                p=aug.stain,
            )
        )
    if aug.color:
        c = aug.color
        ops.append(A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=c / 2, p=aug.color_p))
    if aug.blur:
        ops.append(A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 1.0), p=aug.blur))
    return A.Compose(ops, seed=seed)


def to_tensor(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) normalised with per-channel mean/std (on the [0, 1] scale)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s)
