"""Write pyramidal tiled JPEG TIFFs that OpenSlide opens as generic tiled TIFF (demo slides, benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def pyramid_levels(rgb: np.ndarray, min_size: int = 512) -> list[np.ndarray]:
    """Level 0 plus 2x box-filtered reductions until the longer side is below `min_size`."""
    levels = [rgb]
    while max(levels[-1].shape[:2]) >= 2 * min_size:
        prev = levels[-1]
        h, w = (prev.shape[0] // 2) * 2, (prev.shape[1] // 2) * 2
        p = prev[:h, :w].astype(np.uint16)
        levels.append(((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2] + 2) // 4).astype(np.uint8))
    return levels


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
    import tifffile

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    resolution = None
    if mpp is not None:
        per_cm = 1e4 / mpp
    with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as tif:
        for i, level in enumerate(pyramid_levels(rgb, min_size)):
            if mpp is not None:
                scale = rgb.shape[1] / level.shape[1]
                resolution = (per_cm / scale, per_cm / scale)
            tif.write(
                level,
                tile=(tile, tile),
                photometric="ycbcr",
                compression="jpeg",
                compressionargs={"level": quality},
                subsampling=(2, 2),
                resolution=resolution,
                resolutionunit="CENTIMETER" if mpp is not None else None,
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )
    os.replace(tmp, path)
    return path
