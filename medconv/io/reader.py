"""The slide-reader protocol and mpp parsing: the leaf every reader backend imports, importing none of them.

Coordinates are level-0 pixels; `read_region` returns RGB uint8 (H, W, 3), transparent areas as white,
matching OpenSlide's `read_region` composited on white.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class SlideReader(Protocol):
    path: Path
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    mpp: float | None  # microns per level-0 pixel (x); None when the file has none

    @property
    def dimensions(self) -> tuple[int, int]: ...

    @property
    def level_count(self) -> int: ...

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray: ...

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray: ...

    def close(self) -> None: ...


def read_mpp(properties: dict[str, str] | object) -> float | None:
    """Microns per pixel from OpenSlide properties, or None: never a silent guess."""
    props = dict(properties)  # type: ignore[arg-type]
    for key in ("openslide.mpp-x", "aperio.MPP"):
        if key in props:
            try:
                value = float(props[key])
            except ValueError:
                continue
            if value > 0:
                return value
    unit = props.get("tiff.ResolutionUnit", "").lower()
    xres = props.get("tiff.XResolution")
    if xres and unit in ("centimeter", "inch"):
        per_unit_um = 1e4 if unit == "centimeter" else 25400.0
        value = per_unit_um / float(xres)
        return value if 0 < value < 100 else None
    return None
