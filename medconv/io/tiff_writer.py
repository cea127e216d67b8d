"""Write pyramidal tiled JPEG TIFFs that OpenSlide opens as generic tiled TIFF (demo slides, benchmarks)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


def pyramid_levels(rgb: np.ndarray, min_size: int = 512) -> list[np.ndarray]:
    """Level 0 plus 2x box-filtered reductions until the longer side is below `min_size`."""
    levels = [rgb]
    while max(levels[-1].shape[:2]) >= 2 * min_size:
        levels.append(_halve(levels[-1]))
    return levels


def _halve(rgb: np.ndarray) -> np.ndarray:
    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    p = rgb[:h, :w].astype(np.uint16)
    return ((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2] + 2) // 4).astype(np.uint8)


def write_pyramid_tiff(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float | None,
    tile: int = 256,
    quality: int = 80,
    min_size: int = 512,
) -> Path:
    """Tiled JPEG (YCbCr) pyramid, one IFD per level, resolution in pixels/cm so readers find the mpp.

    Written to a temp file and renamed, so an interrupted write never leaves a slide that looks whole.
    """
    return _write(path, pyramid_levels(rgb, min_size), rgb.shape[1], mpp, tile, quality, rgb.nbytes > 2**31)


def write_pyramid_tiff_tiles(
    path: str | Path,
    width: int,
    height: int,
    make_tile: Callable[[int, int], np.ndarray],
    mpp: float | None,
    tile: int = 256,
    quality: int = 80,
    min_size: int = 512,
) -> Path:
    """As `write_pyramid_tiff`, for slides too large to hold: `make_tile(col, row)` gives level-0 tiles.

    Only level 1 (a quarter of level 0) is kept in memory, filled while level 0 streams to disk.
    """
    half = np.empty((height // 2, width // 2, 3), np.uint8)

    def level0() -> Iterator[np.ndarray]:
        for row in range(-(-height // tile)):
            for col in range(-(-width // tile)):
                t = np.ascontiguousarray(make_tile(col, row)[:tile, :tile])
                if t.shape != (tile, tile, 3) or t.dtype != np.uint8:
                    raise ValueError(f"make_tile must return ({tile}, {tile}, 3) uint8, got {t.shape} {t.dtype}")
                y, x = row * tile // 2, col * tile // 2
                small = _halve(t)
                hh, ww = min(small.shape[0], half.shape[0] - y), min(small.shape[1], half.shape[1] - x)
                half[y : y + hh, x : x + ww] = small[:hh, :ww]
                yield t

    def levels() -> Iterator[np.ndarray | tuple[Iterator[np.ndarray], tuple[int, int]]]:
        yield level0(), (height, width)
        if max(height, width) >= 2 * min_size:
            yield from pyramid_levels(half, min_size)

    return _write(path, levels(), width, mpp, tile, quality, width * height * 3 > 2**31)


def _write(
    path: str | Path, levels, width0: int, mpp: float | None, tile: int, quality: int, bigtiff: bool
) -> Path:
    import tifffile

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    per_cm = 1e4 / mpp if mpp is not None else None
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            for i, level in enumerate(levels):
                data, shape = level if isinstance(level, tuple) else (level, level.shape[:2])
                resolution = None
                if per_cm is not None:
                    scale = width0 / shape[1]
                    resolution = (per_cm / scale, per_cm / scale)
                tif.write(
                    data,
                    shape=(*shape, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    # RGB in; tifffile stores it as YCbCr JPEG ("ycbcr" would claim the input is YCbCr already)
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    subsampling=(2, 2),
                    resolution=resolution,
                    resolutionunit="CENTIMETER" if per_cm is not None else None,
                    subfiletype=0 if i == 0 else 1,
                    metadata=None,
                )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
