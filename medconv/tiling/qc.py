"""The QC image of a tiled slide: what `medconv tile` kept, drawn on the thumbnail."""

from __future__ import annotations

import cv2
import numpy as np

from medconv.tiling.geometry import to_thumbnail


def qc_overlay(
    thumbnail: np.ndarray,
    thumb_downsample: float,
    mask: np.ndarray | None,
    positions: np.ndarray,
    tile_size_level0: float,
    max_side: int = 2048,
) -> np.ndarray:
    """Thumbnail with the tissue outline (green) and kept tiles (blue boxes), for a glance per slide."""
    image = np.ascontiguousarray(thumbnail[..., :3]).copy()
    scale = 1.0
    if max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    ds = thumb_downsample / scale
    for x0, y0, x1, y1 in to_thumbnail(positions, tile_size_level0, ds):
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), (40, 80, 220), 1)
    if mask is not None and mask.any():
        m = cv2.resize(mask.astype(np.uint8), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, (0, 200, 0), 2)
    return image
