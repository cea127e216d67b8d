"""Mammogram preprocessing: breast mask, chest-wall side, crop + flip + resize into a canonical frame.

Canonical frame: the chest wall (the image edge the breast touches) is on the LEFT. Which side it is
on is inferred from the image, not from the laterality tag, because datasets disagree on display
conventions and some files are stored mirrored. Under the usual storage convention (left breast:
chest wall at the image's left edge; right breast: at its right edge) the inferred side equals the
breast's laterality, which is why `infer_laterality` answers "L"/"R".

Lesion annotations given in original pixels follow the image through `transform_boxes` and
`transform_mask`, which apply the same crop, flip and scale as `preprocess`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from medconv.errors import InputFileError

MASK_WORK_SIDE = 256  # the mask is computed on a copy whose longer side is about this many pixels
MIN_BREAST_FRACTION = 0.01  # a "breast" smaller than this share of the image is a marker or noise


def breast_mask(pixels: np.ndarray) -> np.ndarray:
    """Bool (H, W) mask of the breast only: background, burned-in markers and labels dropped.

    Threshold just above the background level, keep the largest component (markers are small and
    apart from the breast), fill its holes. Done on a downsampled copy: the mask only has to be good
    to a few pixels, and full-resolution morphology on a 3000x2500 image is needlessly slow.
    """
    pixels = np.asarray(pixels, np.float32)
    h, w = pixels.shape
    factor = max(1, int(np.ceil(max(h, w) / MASK_WORK_SIDE)))
    small = cv2.resize(pixels, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.medianBlur(small, 3)
    background, high = np.percentile(small, [2, 99.5])
    if high - background < 0.02:  # flat image: nothing stands out from the background
        return np.zeros((h, w), bool)
    fg = small > background + 0.08 * (high - background)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros((h, w), bool)
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    if largest.mean() < MIN_BREAST_FRACTION:
        return np.zeros((h, w), bool)
    largest = ndimage.binary_fill_holes(largest)
    up = cv2.resize(largest.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return up >= 0.5


def infer_laterality(pixels: np.ndarray, mask: np.ndarray | None = None) -> str:
    """Image side the chest wall is on: "L" (left edge) or "R" (right edge).

    The chest wall is the edge the breast touches along its length; the nipple side ends in air.
    Compares how much of the leftmost and rightmost column strips the breast covers, weighted by
    brightness so that a breast touching both edges (large breasts, MLO) still resolves.
    """
    if mask is None:
        mask = breast_mask(pixels)
    w = mask.shape[1]
    strip = max(1, w // 20)
    weight = np.where(mask, np.asarray(pixels, np.float32), 0.0)
    left = float(weight[:, :strip].sum())
    right = float(weight[:, w - strip :].sum())
    if left == right:  # no evidence either way: fall back to where the breast's mass lies
        cols = weight.sum(axis=0)
        centre = (cols * np.arange(w)).sum() / max(cols.sum(), 1e-9)
        return "L" if centre < (w - 1) / 2 else "R"
    return "L" if left > right else "R"


@dataclass
class PreparedMammo:
    """A mammogram in the canonical frame (chest wall on the left), with what it took to get there.

    `crop_box` is (y0, x0, y1, x1) in original pixels (end exclusive); `scale` is output px per
    original px; `resized_hw` is the size of the image content before the zero padding (right/bottom).
    """

    image: np.ndarray
    mask: np.ndarray
    laterality: str
    flipped: bool
    crop_box: tuple[int, int, int, int]
    scale: float
    resized_hw: tuple[int, int] = (0, 0)


def preprocess(
    pixels: np.ndarray, size: tuple[int, int], laterality: str | None = None, source: str = ""
) -> PreparedMammo:
    """Crop the breast, mirror it so the chest wall is on the left, resize keeping aspect, zero-pad.

    The flip follows the chest-wall side seen in the image; `laterality` (from metadata) is recorded
    and, when None, replaced by the inferred side. Outside the breast mask the image is zeroed so
    burned-in markers cannot leak labels. Raises InputFileError naming `source` when no breast is found.
    """
    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim != 2:
        raise InputFileError(f"{source or 'image'} has shape {pixels.shape}; a 2-D greyscale mammogram is expected")
    mask = breast_mask(pixels)
    if not mask.any():
        raise InputFileError(
            f"no breast found in {source or 'the image'}: is it a mammogram? It looks blank or flat; "
            "check the file and its windowing, or drop it from the manifest"
        )
    side = infer_laterality(pixels, mask)
    flipped = side == "R"
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop_box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    prep = PreparedMammo(
        image=np.empty(0, np.float32),
        mask=np.empty(0, bool),
        laterality=(laterality or side).strip().upper()[:1],  # "LEFT" -> "L"
        flipped=flipped,
        crop_box=crop_box,
        scale=1.0,
    )
    prep.scale, prep.resized_hw = _fit(crop_box, size)
    prep.image = _warp(np.where(mask, pixels, 0.0).astype(np.float32), prep, size, cv2.INTER_AREA)
    prep.mask = transform_mask(mask, prep)
    return prep


def transform_mask(mask: np.ndarray, prep: PreparedMammo) -> np.ndarray:
    """Map a bool mask in original pixels (e.g. a lesion mask) into the prepared frame."""
    out = _warp(np.asarray(mask, np.float32), prep, prep.image.shape, cv2.INTER_AREA)
    return out >= 0.5


def transform_boxes(boxes: Sequence[Sequence[float]] | np.ndarray, prep: PreparedMammo) -> np.ndarray:
    """Map [x0, y0, x1, y1] boxes in original pixels into the prepared frame: float (N, 4).

    Pixel-edge coordinates (x1 exclusive), clipped to the crop; a box wholly outside it collapses
    to zero area. Consistent with `transform_mask`: the box of a mask maps onto the box of its image.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    y0, x0, y1, x1 = prep.crop_box
    rh, rw = prep.resized_hw
    sx, sy = rw / (x1 - x0), rh / (y1 - y0)
    bx = np.clip(b[:, [0, 2]] - x0, 0, x1 - x0)
    by = np.clip(b[:, [1, 3]] - y0, 0, y1 - y0)
    if prep.flipped:
        bx = (x1 - x0) - bx[:, ::-1]
    return np.stack([bx[:, 0] * sx, by[:, 0] * sy, bx[:, 1] * sx, by[:, 1] * sy], axis=1)


def _fit(crop_box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    y0, x0, y1, x1 = crop_box
    h, w = y1 - y0, x1 - x0
    scale = min(size[0] / h, size[1] / w)
    return scale, (max(1, min(size[0], round(h * scale))), max(1, min(size[1], round(w * scale))))


def _warp(image: np.ndarray, prep: PreparedMammo, size: tuple[int, ...], interp: int) -> np.ndarray:
    y0, x0, y1, x1 = prep.crop_box
    crop = image[y0:y1, x0:x1]
    if prep.flipped:
        crop = crop[:, ::-1]
    rh, rw = prep.resized_hw
    resized = cv2.resize(np.ascontiguousarray(crop), (rw, rh), interpolation=interp)
    out = np.zeros((int(size[0]), int(size[1])), np.float32)
    out[:rh, :rw] = resized
    return out
