"""One slide-reader interface; dataset, tiling and inference code never care which backend serves it.

Coordinates are level-0 pixels; `read_region` returns RGB uint8 (H, W, 3), transparent areas as white,
matching OpenSlide's `read_region` composited on white.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from medconv.errors import InputFileError


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


class OpenSlideReader:
    """Any format OpenSlide reads (SVS, NDPI, MRXS, SCN, tiled TIFF, DICOM WSI, ...)."""

    def __init__(self, path: str | Path, mpp: float | None = None):
        import openslide

        self.path = Path(path)
        if not self.path.exists():
            raise InputFileError(f"{self.path}: slide not found; check the path.")
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
            raise InputFileError(
                f"{self.path}: OpenSlide cannot open it ({err}); the file is corrupt, truncated or not a slide format."
            ) from err
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = mpp if mpp is not None else read_mpp(self._slide.properties)
        self.properties = dict(self._slide.properties)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        rgba = np.asarray(self._slide.read_region(tuple(int(v) for v in location), int(level), tuple(int(v) for v in size)))
        return _rgba_on_white(rgba)

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        return np.asarray(self._slide.get_thumbnail(max_size).convert("RGB"))

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> "OpenSlideReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide returns premultiplied RGBA with alpha 0 outside the scanned area: show that as white."""
    if rgba[..., 3].min() == 255:  # fully scanned region, the common case: no blending needed
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    return (rgb + (255 - alpha)).clip(0, 255).astype(np.uint8)


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


def open_slide(path: str | Path, mpp: float | None = None, backend: str = "auto") -> SlideReader:
    """Open a slide. `mpp` overrides the file's metadata; `backend`: auto | openslide | tiff."""
    if backend not in ("auto", "openslide", "tiff"):
        raise ValueError(f"backend must be auto, openslide or tiff, not {backend!r}")
    if backend in ("auto", "tiff"):
        try:
            from medconv.io.tiff_reader import TiffSlideReader, can_read
        except ImportError:  # fast path not available in this build
            TiffSlideReader = None  # type: ignore[assignment]
        if TiffSlideReader is not None and (backend == "tiff" or can_read(path)):
            return TiffSlideReader(path, mpp=mpp)
    return OpenSlideReader(path, mpp=mpp)
