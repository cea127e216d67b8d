"""PNG outputs written atomically: QC overlays and masks (the mask carries its downsample in a text chunk)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from medconv.tiling.geometry import to_thumbnail


def write_png(path: str | Path, image: np.ndarray, text: dict[str, str] | None = None) -> Path:
    """Write an RGB or grey PNG via a temp file and rename, so a partial file never looks finished."""
    from PIL import Image, PngImagePlugin

    path = Path(path)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_mask_png(path: str | Path, mask: np.ndarray, downsample: float) -> Path:
    """Boolean mask as 0/255 PNG; `medconv.downsample` (level-0 px per mask px) is stored in the file."""
    return write_png(path, mask.astype(np.uint8) * 255, {"medconv.downsample": repr(float(downsample))})


def read_mask_png(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Mask as bool and its recorded downsample (None for PNGs written by other tools)."""
    from PIL import Image

    with Image.open(path) as im:
        value = im.info.get("medconv.downsample")
        mask = np.asarray(im.convert("L")) > 127
    return mask, float(value) if value is not None else None


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
