"""Training augmentation for prepared mammograms (float32 (H, W) in [0, 1], chest wall on the left).

No horizontal flip: canonical orientation is the point of preprocessing. Mask (lesion) follows the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np


@dataclass
class MammoAugment:
    """Strengths of each augmentation; set a field to 0 (or False) to switch it off."""

    vflip: float = 0.5
    scale: float = 0.1
    translate: float = 0.05
    rotate: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.2
    clahe: bool = False
    p: float = 0.8


def mammo_train_transforms(aug: MammoAugment) -> A.Compose:
    ops: list[A.BasicTransform] = []
    if aug.clahe:
        ops.append(_Clahe(p=0.5))
    if aug.vflip:
        ops.append(A.VerticalFlip(p=aug.vflip))
    if aug.scale or aug.translate or aug.rotate:
        ops.append(
            A.Affine(
                scale=(1 - aug.scale, 1 + aug.scale),
                translate_percent=(-aug.translate, aug.translate),
                rotate=(-aug.rotate, aug.rotate),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=aug.p,
            )
        )
    if aug.brightness or aug.contrast:
        ops.append(A.RandomBrightnessContrast(aug.brightness, aug.contrast, p=aug.p))
    if aug.gamma:
        ops.append(A.RandomGamma(gamma_limit=(100 * (1 - aug.gamma), 100 * (1 + aug.gamma)), p=aug.p))
    return A.Compose(ops, seed=0)


class _Clahe(A.ImageOnlyTransform):
    """CLAHE on float images (albumentations' CLAHE wants uint8; 16-bit keeps the mammogram's depth)."""

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        u16 = (np.clip(img, 0, 1) * 65535).astype(np.uint16)
        out = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(u16)
        return out.astype(np.float32) / 65535.0
