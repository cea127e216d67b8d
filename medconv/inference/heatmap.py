"""Tile scores -> heatmap and slide score: pure functions on arrays (no slide, no model).

The heatmap averages each tile's scores over the cells its footprint covers, as MONAI's `AvgMerger` does (and
`assemble_heatmap_monai` does through it; the tests hold the two equal), at a downsample chosen so that every
tile covers a whole number of cells; cells no tile covers are NaN, so "no tissue" and "score 0" stay apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: the heatmap's longer side never exceeds this many cells (slides with tiny strides get a coarser map)
MAX_HEATMAP_SIDE = 8192
DEFAULT_TOPK = 10


def heatmap_downsample(patch_size_level0: float, stride_level0: float, width: int, height: int,
                       max_side: int = MAX_HEATMAP_SIDE) -> float:
    """Level-0 px per heatmap cell: the largest step dividing both tile size and stride (one cell per tile
    without overlap, 2x2 cells per tile at 50% overlap), coarsened when the map would be too large."""
    size, stride = float(patch_size_level0), float(stride_level0)
    if size <= 0 or stride <= 0:
        raise ValueError(f"tile size and stride must be positive, got {size}, {stride}")
    ratio = size / stride
    # step = stride / k with size / step integer: k the smallest integer making ratio * k (nearly) whole
    k = next((k for k in range(1, 9) if abs(ratio * k - round(ratio * k)) < 1e-3), 1)
    step = stride / k
    return max(step, max(width, height) / max_side)


def heatmap_shape(width: int, height: int, downsample: float) -> tuple[int, int]:
    """(rows, cols) of a heatmap covering a `width` x `height` level-0 image at `downsample`."""
    return max(1, math.ceil(height / downsample - 1e-6)), max(1, math.ceil(width / downsample - 1e-6))


def tile_cells(coords: np.ndarray, patch_size_level0: float, downsample: float, shape: tuple[int, int]) -> np.ndarray:
    """(N, 4) cell boxes (x0, y0, x1, y1), end exclusive, of the cells each tile's footprint touches, clipped to
    the map (floor/ceil, so tiles off the cell grid, e.g. from other tools' coords, still land); a tile wholly
    outside the map gets an empty box."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    start = np.floor(coords / downsample + 1e-6).astype(np.int64)
    end = np.ceil((coords + float(patch_size_level0)) / downsample - 1e-6).astype(np.int64)
    end = np.maximum(end, start + 1)
    rows, cols = shape
    x0, x1 = np.clip(start[:, 0], 0, cols), np.clip(end[:, 0], 0, cols)
    y0, y1 = np.clip(start[:, 1], 0, rows), np.clip(end[:, 1], 0, rows)
    return np.stack([x0, y0, x1, y1], axis=1)


def assemble_heatmap(coords: np.ndarray, scores: np.ndarray, patch_size_level0: float, downsample: float,
                     shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) float32 heatmap (NaN where no tile) and (H, W) count of tiles per cell.

    coords: (N, 2) level-0 (x, y) of tile corners; scores: (N, C). Each tile adds its scores to every cell its
    footprint touches and each cell is divided by its count: what MONAI's AvgMerger does patch by patch
    (`assemble_heatmap_monai`, the reference the tests compare with), here vectorised with one `np.add.at` per
    cell offset, because one Merger call per tile costs ~50 us, seconds for a 10^5-tile slide.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores.reshape(len(np.asarray(coords).reshape(-1, 2)), scores.shape[-1] if scores.ndim == 2 else -1)
    rows, cols = shape
    boxes = tile_cells(coords, patch_size_level0, downsample, shape)
    sums = np.zeros((scores.shape[1], rows, cols), np.float64)
    counts = np.zeros((rows, cols), np.int64)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    for dy in range(int(heights.max(initial=0))):
        for dx in range(int(widths.max(initial=0))):
            hit = (dy < heights) & (dx < widths)
            y, x = boxes[hit, 1] + dy, boxes[hit, 0] + dx
            np.add.at(counts, (y, x), 1)
            for c in range(scores.shape[1]):
                np.add.at(sums[c], (y, x), scores[hit, c])
    with np.errstate(invalid="ignore", divide="ignore"):
        heat = (sums / counts).astype(np.float32)
    heat[:, counts == 0] = np.nan
    return heat, counts.astype(np.int32)


def assemble_heatmap_monai(coords: np.ndarray, scores: np.ndarray, patch_size_level0: float, downsample: float,
                           shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The same map through MONAI's AvgMerger, one `aggregate` call per tile (the reference implementation)."""
    import torch
    from monai.inferers import AvgMerger  # imported here: MONAI takes seconds to import

    scores = np.asarray(scores, dtype=np.float32)
    scores = scores.reshape(len(np.asarray(coords).reshape(-1, 2)), scores.shape[-1] if scores.ndim == 2 else -1)
    n_classes = scores.shape[1]
    merger = AvgMerger(merged_shape=(1, n_classes, *shape), count_dtype=torch.int32)
    for (x0, y0, x1, y1), value in zip(tile_cells(coords, patch_size_level0, downsample, shape).tolist(),
                                       torch.from_numpy(scores), strict=True):
        if x1 > x0 and y1 > y0:
            merger.aggregate(value.view(1, n_classes, 1, 1).expand(1, n_classes, y1 - y0, x1 - x0), (y0, x0))
    counts = merger.get_counts()[0, 0].numpy().astype(np.int32)  # before finalize divides in place
    heat = merger.finalize()[0].numpy().astype(np.float32, copy=True)
    heat[:, counts == 0] = np.nan
    return heat, counts


@dataclass(frozen=True)
class Aggregation:
    """How tile probabilities become a slide score: mean, max, or the mean of the top k."""

    method: str = "max"
    k: int = DEFAULT_TOPK

    def __str__(self) -> str:
        return f"topk:{self.k}" if self.method == "topk" else self.method


def parse_aggregate(text: str) -> Aggregation:
    """`mean`, `max`, `topk` (k=10) or `topk:K`; ValueError naming the accepted forms otherwise."""
    method, _, k = text.strip().lower().partition(":")
    if method in ("mean", "max") and not k:
        return Aggregation(method)
    if method == "topk":
        try:
            value = int(k) if k else DEFAULT_TOPK
        except ValueError:
            value = 0
        if value >= 1:
            return Aggregation("topk", value)
    raise ValueError(f"aggregate must be mean, max, topk or topk:K with K >= 1, not {text!r}")


def aggregate_scores(scores: np.ndarray, how: Aggregation | str) -> np.ndarray:
    """(C,) slide scores from (N, C) tile probabilities, per class; NaN for a slide without tiles.

    topk:K averages each class's K highest tile probabilities (all tiles when fewer), so one stray tile
    cannot decide a slide the way `max` lets it.
    """
    how = parse_aggregate(how) if isinstance(how, str) else how
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {scores.shape}")
    if len(scores) == 0:
        return np.full(scores.shape[1], np.nan)
    if how.method == "mean":
        return scores.mean(axis=0)
    if how.method == "max":
        return scores.max(axis=0)
    k = min(how.k, len(scores))
    return np.sort(scores, axis=0)[-k:].mean(axis=0)


def top_tiles(coords: np.ndarray, scores: np.ndarray, k: int = DEFAULT_TOPK, positive: int = -1) -> np.ndarray:
    """Indices of the `k` tiles with the highest `positive`-class score (all tiles when fewer), highest first; ties
    keep the tiles' order. `coords[top_tiles(...)]` are their level-0 corners, e.g. to open them in a viewer."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or len(scores) != len(np.asarray(coords).reshape(-1, 2)):
        raise ValueError(f"scores must be (N, C) for N coords, got {scores.shape} for {len(coords)} coords")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return np.argsort(-scores[:, positive], kind="stable")[:k]
