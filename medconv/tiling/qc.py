"""The QC of a tiled slide: what `medconv tile` kept, drawn on the thumbnail, and in numbers (notebooks/tiling_qc)."""

from __future__ import annotations

from collections.abc import Sequence

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


def tile_stats(coords: np.ndarray, attrs: dict, tissue_fraction: np.ndarray | None = None) -> dict:
    """One slide's tiling in numbers, from its coords store (`read_coords`, `read_dataset(..., "tissue_fraction")`):
    tiles kept, the tissue the mask found and the share of it the tiles cover (mm^2), and the tiles' tissue fraction
    (median, and the share of tiles under half tissue); NaN where the store lacks what a number needs."""
    n = int(len(coords))
    mpp, size0 = attrs.get("slide_mpp"), attrs.get("patch_size_level0")
    tiled_mm2 = n * (float(size0) * float(mpp)) ** 2 / 1e6 if mpp is not None and size0 is not None else float("nan")
    tissue_mm2 = float(attrs.get("tissue_mm2", float("nan")))
    fractions = np.asarray(tissue_fraction, dtype=np.float64) if tissue_fraction is not None else np.zeros(0)
    return {
        "n_tiles": n,
        "tissue_mm2": tissue_mm2,
        "tiled_mm2": tiled_mm2,
        "median_tissue_fraction": float(np.median(fractions)) if len(fractions) else float("nan"),
        "share_under_half_tissue": float((fractions < 0.5).mean()) if len(fractions) else float("nan"),
    }


def few_tiles(n_tiles: Sequence[int] | np.ndarray, min_tiles: int = 50, relative: float = 0.25) -> np.ndarray:
    """Boolean per slide: fewer than `min_tiles` tiles, or fewer than `relative` times the median slide's count
    (a slide the tissue mask mostly missed, or one too small to train on)."""
    counts = np.asarray(n_tiles, dtype=np.float64)
    if counts.size == 0:
        return np.zeros(0, dtype=bool)
    return (counts < min_tiles) | (counts < relative * float(np.median(counts)))
