"""Fast slide reader for TIFF-family slides: decode the stored tiles directly, compose regions from them.

OpenSlide's `read_region` paints every tile through cairo into premultiplied ARGB and reaches about a
fifth of the rate at which libjpeg-turbo decodes the same tiles. For the two layouts OpenSlide itself treats as
plain tile grids (Aperio SVS and generic tiled TIFF) this reader reads each tile's bytes with `pread`,
decodes them with imagecodecs exactly as OpenSlide does (shared JPEGTables, RGB vs YCbCr colour
transform) and copies them into the region. Anything it cannot reproduce exactly -- other vendors,
strips, unsupported compression or sample layout -- is refused by `can_read`, so `open_slide` hands it
to OpenSlide instead.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medconv.errors import InputFileError
from medconv.io.reader import read_mpp
from medconv.io.tiff_codecs import UnsupportedTiff, codec_name, decoder
from medconv.io.tiff_properties import openslide_downsamples, tiff_properties

# OpenSlide vendors whose levels are simple tile grids with OpenSlide's default geometry.
GRID_VENDORS = ("aperio", "generic-tiff")
DEFAULT_CACHE_BYTES = 32 * 2**20  # OpenSlide's default tile cache size


@dataclass(frozen=True)
class TileGrid:
    """One pyramid level as stored: where each tile's bytes are and how to decode them (used by the bench too)."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    across: int
    down: int
    offsets: np.ndarray  # int64, row-major tile index
    counts: np.ndarray
    decode: Callable[..., np.ndarray]  # decode(data, out=None): `out` is a reusable buffer, may be ignored
    codec: str  # e.g. "jpeg/ycbcr", "jpeg/rgb", "lzw"


class _BufferPool:
    """Tile-sized buffers handed back by evicted cache entries and scratch tiles, for the next decode.

    Decoding into fresh memory costs page faults on every tile (about a quarter of the decode time for
    Aperio's 240-px tiles); reusing buffers avoids that. Shared by all readers of a process, bounded.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._bytes = 0

    def take(self, shape: tuple[int, ...]) -> np.ndarray | None:
        free = self._free.get(shape)
        if not free:
            return None
        buf = free.pop()
        self._bytes -= buf.nbytes
        return buf

    def give(self, buf: np.ndarray) -> None:
        """Only for arrays no caller can still see."""
        if self._bytes + buf.nbytes <= self.max_bytes and buf.flags.c_contiguous and buf.flags.owndata:
            self._free.setdefault(buf.shape, []).append(buf)
            self._bytes += buf.nbytes


_POOL = _BufferPool(DEFAULT_CACHE_BYTES)


def can_read(path: str | Path) -> bool:
    """True only when every level can be decoded exactly as OpenSlide would; otherwise OpenSlide serves it."""
    try:
        _scan(Path(path))
    except Exception:  # noqa: BLE001 -- any doubt means "let OpenSlide decide"
        return False
    return True


class TiffSlideReader:
    """SlideReader over the stored tiles of an Aperio SVS or generic tiled TIFF.

    Pickles as (path, mpp) and reopens in the new process, so each DataLoader worker has its own file
    handle; a forked copy notices the new pid and reopens too.
    """

    def __init__(self, path: str | Path, mpp: float | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES):

        self.path = Path(path)
        self._mpp_override = mpp
        self._cache_bytes = cache_bytes
        if not self.path.exists():
            raise InputFileError(f"{self.path}: slide not found; check the path.")
        try:
            levels, properties = _scan(self.path)
        except UnsupportedTiff as err:
            raise InputFileError(
                f"{self.path}: the fast TIFF reader cannot decode it ({err}); open it with backend='openslide'."
            ) from err
        except Exception as err:  # noqa: BLE001 -- tifffile raises many types for damaged files
            raise InputFileError(
                f"{self.path}: cannot read it as a TIFF slide ({err}); the file is corrupt or truncated."
            ) from err
        self._levels = levels
        self.properties = properties
        self.level_dimensions = tuple((lv.width, lv.height) for lv in levels)
        self.level_downsamples = openslide_downsamples(self.level_dimensions)
        self.mpp = mpp if mpp is not None else read_mpp(properties)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached = 0
        self._fd = -1
        self._pid = -1
        self._open()

    # --- process-local file handle ------------------------------------------------------------
    def _open(self) -> None:
        if self._fd >= 0 and self._pid != os.getpid():
            os.close(self._fd)  # the copy a fork inherited; the parent's own stays open
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._pid = os.getpid()
        self._drop_cache()

    def __getstate__(self) -> dict:
        return {"path": self.path, "mpp": self._mpp_override, "cache_bytes": self._cache_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], mpp=state["mpp"], cache_bytes=state["cache_bytes"])  # type: ignore[misc]

    # --- SlideReader ----------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._levels)

    def grid(self, level: int) -> TileGrid:
        return self._levels[level]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3); outside the slide is white. `location` is in level-0 pixels."""
        if self._pid != os.getpid():
            self._open()
        if not 0 <= level < len(self._levels):
            raise ValueError(f"level {level} out of range; {self.path} has {len(self._levels)} levels")
        w, h = int(size[0]), int(size[1])
        if w < 0 or h < 0:
            raise ValueError(f"negative region size {size}")
        lv = self._levels[level]
        ds = self.level_downsamples[level]
        x = _to_level(int(location[0]), ds)
        y = _to_level(int(location[1]), ds)
        tw, th = lv.tile_w, lv.tile_h
        # Fast path: the region is exactly one stored tile, fully inside the level.
        aligned = w == tw and h == th and x % tw == 0 and y % th == 0
        if aligned and 0 <= x and x + w <= lv.width and 0 <= y and y + h <= lv.height:
            key = (level, (y // th) * lv.across + x // tw)
            hit = self._cache.get(key)
            if hit is not None:
                return hit[:h, :w].copy()
            tile = self._decode_tile(lv, key[1])
            if tile is None:
                return np.full((h, w, 3), 255, np.uint8)
            if tile.shape[:2] == (h, w):
                return tile
        return self._compose(level, lv, x, y, w, h)

    def _compose(self, level: int, lv: TileGrid, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Copy the overlapping part of every stored tile; tiles only partly used are cached for the neighbours."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        inside = x0 == x and y0 == y and x1 == x + w and y1 == y + h
        out = np.empty((h, w, 3), np.uint8) if inside else np.full((h, w, 3), 255, np.uint8)
        if x0 >= x1 or y0 >= y1:
            return out
        tw, th = lv.tile_w, lv.tile_h
        for row in range(y0 // th, (y1 - 1) // th + 1):
            ty = row * th
            sy0, sy1 = max(y0, ty), min(y1, ty + th)
            for col in range(x0 // tw, (x1 - 1) // tw + 1):
                tx = col * tw
                sx0, sx1 = max(x0, tx), min(x1, tx + tw)
                partial = (sx1 - sx0) < tw or (sy1 - sy0) < th
                tile, cached = self._tile(level, lv, row * lv.across + col, cache=partial)
                if tile is None:  # missing tile (byte count 0): OpenSlide leaves it transparent
                    if inside:
                        out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = 255
                    continue
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
                if not cached:
                    _POOL.give(tile)
        return out

    def _tile(self, level: int, lv: TileGrid, index: int, cache: bool) -> tuple[np.ndarray | None, bool]:
        """(tile, whether the cache now owns it); a tile the cache does not own may go back to the pool."""
        key = (level, index)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit, True
        tile = self._decode_tile(lv, index, _POOL.take((lv.tile_h, lv.tile_w, 3)))
        if not (cache and tile is not None and tile.nbytes <= self._cache_bytes):
            return tile, False
        self._cache[key] = tile
        self._cached += tile.nbytes
        while self._cached > self._cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
            _POOL.give(old)
        return tile, True

    def _drop_cache(self) -> None:
        for tile in self._cache.values():
            _POOL.give(tile)
        self._cache.clear()
        self._cached = 0

    def _decode_tile(self, lv: TileGrid, index: int, out: np.ndarray | None = None) -> np.ndarray | None:
        count = int(lv.counts[index])
        if count == 0:
            return None
        data = os.pread(self._fd, count, int(lv.offsets[index]))
        if len(data) != count:
            raise InputFileError(f"{self.path}: tile data ends early (file truncated); re-copy the slide.")
        try:
            return lv.decode(data, out=out)
        except Exception as err:  # noqa: BLE001 -- codec errors have many types
            raise InputFileError(f"{self.path}: a stored tile cannot be decoded ({err}); the file is corrupt.") from err

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        """As openslide-python: the level best for the downsample, whole, then a Lanczos thumbnail."""
        from PIL import Image

        downsample = max(d / m for d, m in zip(self.dimensions, max_size, strict=True))
        level = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample:
                level = i
        image = Image.fromarray(self.read_region((0, 0), level, self.level_dimensions[level]))
        image.thumbnail(tuple(int(v) for v in max_size), Image.Resampling.LANCZOS)
        return np.asarray(image)

    def close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = -1
        self._drop_cache()

    def __enter__(self) -> TiffSlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"TiffSlideReader({str(self.path)!r}, levels={self.level_dimensions}, mpp={self.mpp})"


def _to_level(v: int, ds: float) -> int:
    """Level-0 coordinate to level coordinate as OpenSlide maps it (exact whenever v is a multiple of ds).

    Negative values truncate towards zero as OpenSlide's read_region does; positive ones round, which is
    what OpenSlide's sub-pixel cairo translation is closest to when v / ds is not integral.
    """
    if ds == 1.0:
        return v
    if v < 0:
        return -int(-v / ds)
    return int(math.floor(v / ds + 0.5))


def _scan(path: Path) -> tuple[list[TileGrid], dict[str, str]]:
    """Levels and properties, or UnsupportedTiff / a tifffile error when OpenSlide must serve the file."""
    import openslide
    import tifffile

    vendor = openslide.OpenSlide.detect_format(str(path))
    if vendor not in GRID_VENDORS:
        raise UnsupportedTiff(f"OpenSlide format {vendor!r} is not a plain tile grid")
    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if p.is_tiled]  # main IFD chain, as OpenSlide walks it
        if not pages:
            raise UnsupportedTiff("no tiled directory")
        if vendor == "generic-tiff":
            pages.sort(key=lambda p: -p.imagewidth)
        levels = [_level(p, size, vendor) for p in pages]
        properties = tiff_properties(tif.pages[0], vendor, levels)
    return levels, properties


def _level(page, file_size: int, vendor: str) -> TileGrid:
    if page.imagedepth > 1 or page.samplesperpixel != 3 or page.bitspersample != 8 or page.planarconfig != 1:
        raise UnsupportedTiff("only 8-bit, 3-sample, contiguous tiles")
    if page.tiledepth > 1:
        raise UnsupportedTiff("volumetric tiles")
    offsets = np.asarray(page.dataoffsets, np.int64)
    counts = np.asarray(page.databytecounts, np.int64)
    across = -(-page.imagewidth // page.tilewidth)
    down = -(-page.imagelength // page.tilelength)
    if len(offsets) != across * down or len(counts) != len(offsets):
        raise UnsupportedTiff("tile count does not match the grid")
    if np.any((offsets + counts > file_size) & (counts > 0)):
        raise ValueError("tile data runs past the end of the file")  # damaged, not unsupported
    return TileGrid(
        width=page.imagewidth,
        height=page.imagelength,
        tile_w=page.tilewidth,
        tile_h=page.tilelength,
        across=across,
        down=down,
        offsets=offsets,
        counts=counts,
        decode=decoder(page, vendor),
        codec=codec_name(page),
    )
