"""Pure tiling geometry: level choice, grid positions, tissue fractions, coords <-> thumbnail/heatmap.

Everything here is arithmetic on sizes and arrays (no slide, no I/O), so heatmaps, slide tiling and
mammogram patch grids share one tested implementation. Positions are (x, y) of a tile's top-left
corner in the pixel frame of the image being gridded (level 0 for slides).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

#: how much finer than level 0 a target may be before we refuse (upsampling invents no detail)
MAX_UPSAMPLE = 1.15


@dataclass(frozen=True)
class TilePlan:
    """How one tile of `tile_size` px at the target mpp is read from a slide."""

    level: int  # pyramid level read from
    level_downsample: float  # that level's downsample w.r.t. level 0
    read_size: int  # pixels read at `level` (resized to tile_size afterwards when different)
    patch_size_level0: int  # tile footprint in level-0 pixels
    stride_level0: float  # distance between tile origins in level-0 pixels
    target_downsample: float  # target mpp / slide mpp

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def choose_level(level_downsamples: tuple[float, ...] | list[float], target_downsample: float, tol: float = 0.02) -> int:
    """Coarsest level whose downsample does not exceed the target (reading finer and shrinking keeps detail).

    `tol` absorbs pyramids whose downsamples are 3.9998 instead of 4.
    """
    if target_downsample <= 0:
        raise ValueError(f"target downsample must be positive, got {target_downsample}")
    best = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= target_downsample * (1 + tol) and ds >= level_downsamples[best]:
            best = i
    return best


def plan_tiles(
    level_downsamples: tuple[float, ...] | list[float],
    slide_mpp: float,
    target_mpp: float,
    tile_size: int,
    overlap: int = 0,
) -> TilePlan:
    """Level, read size and level-0 footprint/stride for tiles of `tile_size` px at `target_mpp`.

    `overlap` is in output pixels (at the target mpp), like `tile_size`.
    """
    if tile_size <= 0:
        raise ValueError(f"tile size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for tile size {tile_size}")
    if slide_mpp <= 0 or target_mpp <= 0:
        raise ValueError(f"mpp must be positive, got slide {slide_mpp}, target {target_mpp}")
    target_ds = target_mpp / slide_mpp
    if target_ds * MAX_UPSAMPLE < 1:
        raise ValueError(
            f"target {target_mpp} um/px is finer than the slide's {slide_mpp:.4g} um/px "
            f"(tiles would be upsampled {1 / target_ds:.3g}x); use a target mpp >= {slide_mpp:.4g}"
        )
    level = choose_level(level_downsamples, target_ds)
    level_ds = float(level_downsamples[level])
    read_size = max(1, round(tile_size * target_ds / level_ds))
    return TilePlan(
        level=level,
        level_downsample=level_ds,
        read_size=int(read_size),
        patch_size_level0=int(round(tile_size * target_ds)),
        stride_level0=(tile_size - overlap) * target_ds,
        target_downsample=target_ds,
    )


def grid_positions(width: int, height: int, size: float, stride: float, edge: str = "drop") -> np.ndarray:
    """Top-left (x, y) of tiles of `size` every `stride` over a `width` x `height` image, int64 (N, 2).

    edge: "drop" keeps only tiles fully inside (CLAM/TRIDENT behaviour); "include" adds the partial
    tiles that start inside the image (readers pad them); "shift" adds one last full tile flush with
    the far edge so the border is covered without padding.
    """
    if size <= 0 or stride <= 0:
        raise ValueError(f"size and stride must be positive, got {size}, {stride}")
    if edge not in ("drop", "include", "shift"):
        raise ValueError(f"edge must be drop, include or shift, not {edge!r}")
    xs = _axis_positions(width, size, stride, edge)
    ys = _axis_positions(height, size, stride, edge)
    gx, gy = np.meshgrid(xs, ys)  # row-major: y outer, x inner
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)


def _axis_positions(length: int, size: float, stride: float, edge: str) -> np.ndarray:
    if edge == "include":
        n = int(np.ceil(length / stride)) if length > 0 else 0
    else:
        n = int(np.floor((length - size) / stride)) + 1 if length >= size else 0
    pos = np.round(np.arange(n) * stride).astype(np.int64)
    if edge == "shift" and n > 0 and pos[-1] + size < length:
        pos = np.append(pos, int(np.floor(length - size)))
    return pos


def mask_fractions(positions: np.ndarray, size: float, mask: np.ndarray, mask_downsample: float) -> np.ndarray:
    """Fraction of each tile's footprint covered by `mask` (a boolean image at `mask_downsample`).

    Uses an integral image so millions of tiles cost one cumulative sum; parts of a tile outside the
    mask count as empty.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if len(positions) == 0:
        return np.zeros(0)
    h, w = mask.shape
    integral = cv2.integral(np.ascontiguousarray(mask.astype(bool)).view(np.uint8), sdepth=cv2.CV_64F) if h * w < 2**31 \
        else _integral_np(mask)  # OpenCV's integral image is ~10x numpy's double cumsum
    x0 = np.round(positions[:, 0] / mask_downsample).astype(np.int64)
    y0 = np.round(positions[:, 1] / mask_downsample).astype(np.int64)
    side = max(1, int(round(size / mask_downsample)))
    x1, y1 = x0 + side, y0 + side
    cx0, cx1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    cy0, cy1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    covered = integral[cy1, cx1] - integral[cy0, cx1] - integral[cy1, cx0] + integral[cy0, cx0]
    return covered / float(side * side)


def _integral_np(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(bool), axis=0, dtype=np.int64), axis=1)
    return integral


def grid_in_mask(
    width: int,
    height: int,
    size: float,
    stride: float,
    mask: np.ndarray,
    mask_downsample: float,
    min_fraction: float,
    edge: str = "drop",
) -> tuple[np.ndarray, np.ndarray]:
    """Grid positions over an image whose mask fraction is >= `min_fraction`, and those fractions.

    General enough for slides (tissue mask at a thumbnail downsample) and mammograms (breast mask).
    """
    positions = grid_positions(width, height, size, stride, edge)
    fractions = mask_fractions(positions, size, mask, mask_downsample)
    keep = fractions >= min_fraction
    return positions[keep], fractions[keep]


def to_thumbnail(positions: np.ndarray, size: float, downsample: float) -> np.ndarray:
    """Tile boxes (x0, y0, x1, y1) in a thumbnail/mask/heatmap that is `downsample` times smaller."""
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    boxes = np.concatenate([p, p + size], axis=1) / downsample
    return np.round(boxes).astype(np.int64)


def from_thumbnail(points: np.ndarray, downsample: float) -> np.ndarray:
    """Thumbnail pixel (x, y) back to level-0 pixels (the inverse mapping, for clicks and annotations)."""
    return np.round(np.asarray(points, dtype=np.float64) * downsample).astype(np.int64)


def heatmap_indices(positions: np.ndarray, stride: float, origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(row, col) of each tile in a heatmap with one cell per grid step."""
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 2) - np.asarray(origin, dtype=np.float64)
    cols = np.round(p[:, 0] / stride).astype(np.int64)
    rows = np.round(p[:, 1] / stride).astype(np.int64)
    return np.stack([rows, cols], axis=1)


def heatmap_shape(width: int, height: int, stride: float) -> tuple[int, int]:
    """(rows, cols) of a heatmap with one cell per grid step covering a `width` x `height` image."""
    return int(np.ceil(height / stride)), int(np.ceil(width / stride))
