"""Plain images (strip or single-level TIFF, PNG, JPEG) as one-level slides, as TRIDENT and TIAToolbox read them.

OpenSlide refuses anything without tiles, yet stain-normalised exports, IHC crops and microscope camera
images are plain RGB files. They are decoded whole into memory (an uncompressed RGB TIFF is memory-mapped
instead), so `diagnose.MAX_PLAIN_BYTES` bounds them. The mpp comes from the caller or from a resolution tag
that describes a microscope (finer than PLAIN_MAX_MPP); 72/96/300 dpi print settings are not calibrations
and are ignored, so the "needs --slide-mpp" error applies instead of a guess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medconv.errors import InputFileError
from medconv.io.diagnose import no_pixel_limit, probe
from medconv.io.reader import read_mpp
from medconv.io.tiff_properties import resolution_properties

#: a resolution tag coarser than this (um/px) is a print or screen setting, not a scan calibration
PLAIN_MAX_MPP = 10.0
_BAND_BYTES = 64 * 2**20  # rows processed at once when compositing or shrinking large images


class PlainImageReader:
    """SlideReader with a single level over an image held in memory (or memory-mapped).

    `description` says what the file is (for messages); `mpp_note` why a resolution tag was not used.
    Pickles as (path, mpp) and decodes again in the new process, like TiffSlideReader.
    """

    def __init__(self, path: str | Path, mpp: float | None = None):
        self.path = Path(path)
        self._mpp_override = mpp
        if not self.path.exists():
            raise InputFileError(f"{self.path}: slide not found; check the path.")
        found = probe(self.path)
        if found.plain is None:
            raise InputFileError(found.message(self.path))
        self.description = found.what
        try:
            load = _load_tiff if found.plain == "tiff" else _load_pil
            self._pixels, file_mpp = load(self.path)
        except Exception as err:
            raise InputFileError(
                f"{self.path}: {found.what} cannot be decoded ({err}); the file is truncated or corrupt, copy it again."
            ) from err
        h, w = self._pixels.shape[:2]
        self.level_dimensions = ((int(w), int(h)),)
        self.level_downsamples = (1.0,)
        self.mpp_note = ""
        if file_mpp is not None and file_mpp > PLAIN_MAX_MPP:
            self.mpp_note = (f"its resolution tag ({25400 / file_mpp:.0f} dpi = {file_mpp:.1f} um/px) is a print or "
                             "screen setting, not a scan calibration")
            file_mpp = None
        self.mpp = mpp if mpp is not None else file_mpp
        self.properties = {"openslide.level-count": "1", "medconv.description": self.description}
        if file_mpp is not None:
            self.properties["openslide.mpp-x"] = self.properties["openslide.mpp-y"] = f"{file_mpp:.6g}"

    def __getstate__(self) -> dict:
        return {"path": self.path, "mpp": self._mpp_override}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], mpp=state["mpp"])  # type: ignore[misc]

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return 1

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3); outside the image is white, as for the other readers."""
        if level != 0:
            raise ValueError(f"level {level} out of range; {self.path} is a plain image with one level")
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if w < 0 or h < 0:
            raise ValueError(f"negative region size {size}")
        width, height = self.dimensions
        if 0 <= x and 0 <= y and x + w <= width and y + h <= height:
            return np.array(self._pixels[y : y + h, x : x + w])
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x0 < x1 and y0 < y1:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._pixels[y0:y1, x0:x1]
        return out

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        """Area-averaged (cv2.INTER_AREA), aspect kept, never enlarged."""
        width, height = self.dimensions
        scale = min(1.0, max_size[0] / width, max_size[1] / height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return _shrink(self._pixels, size)

    def close(self) -> None:
        self._pixels = np.zeros((*self.dimensions[::-1], 3), np.uint8)[:0, :0]  # drop the pixels / the mapping

    def __enter__(self) -> PlainImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PlainImageReader({str(self.path)!r}, {self.dimensions}, mpp={self.mpp})"


def _shrink(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.resize INTER_AREA, in row bands reduced by a whole factor first when the image is large."""
    import cv2

    height, width = pixels.shape[:2]
    if size == (width, height):
        return np.array(pixels)
    k = max(1, int(min(width / size[0], height / size[1])))
    if k == 1 or pixels.nbytes <= 16 * _BAND_BYTES:
        return cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA)
    step = k * max(1, _BAND_BYTES // (width * 3 * k))
    bands = [
        cv2.resize(np.ascontiguousarray(pixels[y : y + step]), (-(-width // k), -(-min(step, height - y) // k)),
                   interpolation=cv2.INTER_AREA)
        for y in range(0, height, step)
    ]
    return cv2.resize(np.concatenate(bands), size, interpolation=cv2.INTER_AREA)


def _load_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        props = resolution_properties(page.tags)
        mappable = page.is_memmappable and page.planarconfig == 1 and page.samplesperpixel == 3
        if mappable and int(page.photometric) == 2 and page.bitspersample == 8:
            return tifffile.memmap(path, page=0, mode="r"), read_mpp(props)
        pixels = page.asarray()
        if page.planarconfig == 2 and pixels.ndim == 3:
            pixels = np.moveaxis(pixels, 0, -1)
        photometric, colormap = int(page.photometric), page.colormap
        premultiplied = bool(page.extrasamples) and int(page.extrasamples[0]) == 1
    if photometric == 3:  # palette: indices into a 16-bit (sometimes 8-bit) colour map
        lut = np.asarray(colormap)
        lut = (lut >> 8 if lut.max() > 255 else lut).astype(np.uint8).T
        pixels = lut[pixels]
    elif photometric == 0:  # min-is-white greyscale
        pixels = 255 - pixels if pixels.ndim == 2 else np.concatenate([255 - pixels[..., :1], pixels[..., 1:]], axis=2)
    return _to_rgb(pixels, premultiplied), read_mpp(props)


def _load_pil(path: Path) -> tuple[np.ndarray, float | None]:
    from PIL import Image

    with no_pixel_limit(), Image.open(path) as im:
        im.load()
        dpi = im.info.get("dpi")
        if "A" in im.mode or "transparency" in im.info:
            pixels = np.asarray(im.convert("RGBA"))
        else:
            pixels = np.asarray(im.convert("RGB"))
    props = {"tiff.ResolutionUnit": "inch", "tiff.XResolution": repr(float(dpi[0]))} if dpi and float(dpi[0]) > 0 else {}
    return _to_rgb(pixels, premultiplied=False), read_mpp(props)


def _to_rgb(pixels: np.ndarray, premultiplied: bool) -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA uint8 -> contiguous RGB uint8; transparency shows as white."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] not in (2, 4):
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3])
    out = np.empty((*pixels.shape[:2], 3), np.uint8)
    rows = max(1, _BAND_BYTES // (pixels.shape[1] * 8))
    for y in range(0, pixels.shape[0], rows):
        band = pixels[y : y + rows].astype(np.uint16)
        colour, alpha = band[..., :-1], band[..., -1:]
        if premultiplied:
            mixed = colour + (255 - alpha)
        else:
            mixed = (colour * alpha + 255 * (255 - alpha) + 127) // 255
        out[y : y + rows] = np.minimum(mixed, 255).astype(np.uint8)  # broadcasts grey over the 3 channels
    return out
