"""One slide-reader interface; dataset, tiling and inference code never care which backend serves it.

Backends: the fast TIFF reader (Aperio SVS, generic tiled TIFF), OpenSlide (everything else it reads),
and PlainImageReader (strip TIFF, PNG, JPEG as one level). A file none of them opens is refused with
what it is and what to do (`medconv.io.diagnose`), not a bare "cannot open".

Coordinates are level-0 pixels; `read_region` returns RGB uint8 (H, W, 3), transparent areas as white,
matching OpenSlide's `read_region` composited on white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medconv.errors import InputFileError
from medconv.io.diagnose import diagnose, probe
from medconv.io.reader import SlideReader, read_mpp

__all__ = ["OpenSlideReader", "SlideReader", "open_slide", "read_mpp"]
BACKENDS = ("auto", "openslide", "tiff", "plain")


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
            raise InputFileError(diagnose(self.path, reason=f"OpenSlide: {err}")) from err
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

    def __enter__(self) -> OpenSlideReader:
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


def open_slide(path: str | Path, mpp: float | None = None, backend: str = "auto") -> SlideReader:
    """Open a slide. `mpp` overrides the file's metadata; `backend`: auto | openslide | tiff | plain.

    auto: the fast TIFF reader when it decodes the file exactly as OpenSlide would, else OpenSlide, else a
    plain image as one level; otherwise InputFileError saying what the file is and what to do.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    from medconv.io.plain_image import PlainImageReader

    if backend == "plain":
        return PlainImageReader(path, mpp=mpp)
    if backend in ("auto", "tiff"):
        try:
            from medconv.io.tiff_reader import TiffSlideReader, can_read
        except ImportError:  # fast path not available in this build
            TiffSlideReader = None  # type: ignore[assignment]
        if TiffSlideReader is not None and (backend == "tiff" or can_read(path)):
            return TiffSlideReader(path, mpp=mpp)
    try:
        return OpenSlideReader(path, mpp=mpp)
    except InputFileError:
        if backend == "auto" and Path(path).exists() and probe(path).plain:
            return PlainImageReader(path, mpp=mpp)
        raise
