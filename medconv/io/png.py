"""PNG outputs written atomically: images and masks (the mask carries its downsample in a text chunk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medconv.io.atomic import atomic_path


def write_png(path: str | Path, image: np.ndarray, text: dict[str, str] | None = None, compress_level: int = 1) -> Path:
    """Write an RGB or grey PNG via a temp file and rename, so a partial file never looks finished.

    zlib level 1, not PIL's 6: QC images and masks are written for every slide on the tiling path, where level 6
    cost about a third of a large slide's tiling time for files only ~20% smaller."""
    from PIL import Image, PngImagePlugin

    path = Path(path)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG", pnginfo=info, compress_level=compress_level)
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
