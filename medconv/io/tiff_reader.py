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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medconv.errors import InputFileError

# OpenSlide vendors whose levels are simple tile grids with OpenSlide's default geometry.
GRID_VENDORS = ("aperio", "generic-tiff")
JPEG = 7
APERIO_J2K_YCBCR, APERIO_J2K_RGB = 33003, 33005
# Lossless codecs: any correct decoder gives the same pixels as libtiff does inside OpenSlide.
LOSSLESS = {1: "none", 5: "lzw", 8: "deflate", 32946: "deflate", 32773: "packbits"}
PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR = 2, 6
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


class UnsupportedTiff(Exception):
    """Internal: this file needs OpenSlide (never reaches the user)."""


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
        from medconv.io.slide import read_mpp

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
        self.level_downsamples = _downsamples(self.level_dimensions)
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

        downsample = max(d / m for d, m in zip(self.dimensions, max_size))
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

    def __enter__(self) -> "TiffSlideReader":
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


def _downsamples(dims: tuple[tuple[int, int], ...]) -> tuple[float, ...]:
    """OpenSlide's rule: mean of the width and height ratios to level 0."""
    w0, h0 = dims[0]
    return tuple(1.0 if i == 0 else (h0 / h + w0 / w) / 2 for i, (w, h) in enumerate(dims))


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
        properties = _properties(tif.pages[0], vendor, levels)
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
        decode=_decoder(page, vendor),
        codec=_codec_name(page),
    )


def _decoder(page, vendor: str) -> Callable[[bytes], np.ndarray]:
    """bytes of one stored tile -> (tile_h, tile_w, 3) uint8, the same pixels OpenSlide's decoder gives."""
    import imagecodecs

    compression, photometric = int(page.compression), int(page.photometric)
    if compression == JPEG:
        if photometric not in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR):
            raise UnsupportedTiff(f"JPEG with photometric {photometric}")
        tables = page.jpegtables
        # Aperio's "JPEG/RGB" tiles hold RGB samples: libjpeg must not apply the YCbCr transform.
        colorspace = "RGB" if photometric == PHOTOMETRIC_RGB else None
        decode = imagecodecs.jpeg8_decode

        def jpeg(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
            if out is not None:
                try:
                    return decode(data, tables=tables, colorspace=colorspace, out=out)
                except ValueError:  # a stored tile of another size: decode it into new memory
                    pass
            return decode(data, tables=tables, colorspace=colorspace)

        return jpeg
    if compression in (APERIO_J2K_YCBCR, APERIO_J2K_RGB) and vendor == "aperio":
        return _j2k_decoder(page, ycbcr=compression == APERIO_J2K_YCBCR)
    if compression in LOSSLESS and photometric == PHOTOMETRIC_RGB:
        page_decode = page.decode
        tables = page.jpegtables
        shape = (page.tilelength, page.tilewidth, 3)

        def lossless(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
            segment = page_decode(data, 0, jpegtables=tables)[0]
            return np.ascontiguousarray(segment.reshape(shape))

        return lossless
    raise UnsupportedTiff(f"compression {compression} with photometric {photometric}")


def _j2k_decoder(page, ycbcr: bool) -> Callable[[bytes], np.ndarray]:
    """Aperio JPEG 2000 tiles: raw codestreams whose components are YCbCr (33003) or RGB (33005).

    OpenSlide converts 33003 itself, with rounded tables on libjpeg's constants; the same tables here give
    identical pixels. Chroma-subsampled codestreams are refused (OpenSlide upsamples them its own way).
    """
    import imagecodecs

    decode = imagecodecs.jpeg2k_decode
    first = next((i for i, n in enumerate(page.databytecounts) if n), None)
    if first is not None:
        page.parent.filehandle.seek(page.dataoffsets[first])
        if _j2k_subsampled(page.parent.filehandle.read(min(page.databytecounts[first], 256))):
            raise UnsupportedTiff("JPEG 2000 with subsampled chroma")
    if not ycbcr:

        def j2k_rgb(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
            return decode(data)

        return j2k_rgb
    r_cr, g_cbcr, b_cb = _ycbcr_tables()

    def j2k_ycbcr(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
        c = decode(data)
        if c.ndim != 3 or c.shape[2] != 3 or c.dtype != np.uint8:
            raise ValueError(f"JPEG 2000 tile decoded to {c.shape} {c.dtype}, expected 3 x 8-bit")
        y = c[..., 0].astype(np.int16)
        cb, cr = c[..., 1], c[..., 2]
        rgb = np.empty(c.shape, np.uint8)
        rgb[..., 0] = np.clip(y + r_cr[cr], 0, 255)
        rgb[..., 1] = np.clip(y + g_cbcr[cb, cr], 0, 255)
        rgb[..., 2] = np.clip(y + b_cb[cb], 0, 255)
        return rgb

    return j2k_ycbcr


def _j2k_subsampled(head: bytes) -> bool:
    """Any XRsiz/YRsiz != 1 in the SIZ marker segment that follows SOC."""
    if head[:4] != b"\xff\x4f\xff\x51" or len(head) < 42:
        return True  # not a bare codestream: let OpenSlide judge
    ncomp = int.from_bytes(head[40:42], "big")
    comps = head[42 : 42 + 3 * ncomp]
    return len(comps) < 3 * ncomp or any(comps[3 * i + 1] != 1 or comps[3 * i + 2] != 1 for i in range(ncomp))


def _ycbcr_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.arange(256, dtype=np.float64) - 128
    r_cr = np.floor(1.402 * v + 0.5).astype(np.int16)
    b_cb = np.floor(1.772 * v + 0.5).astype(np.int16)
    g_cbcr = np.floor(-0.34414 * v[:, None] - 0.71414 * v[None, :] + 0.5).astype(np.int16)
    return r_cr, g_cbcr, b_cb


def _codec_name(page) -> str:
    compression = int(page.compression)
    if compression in (APERIO_J2K_YCBCR, APERIO_J2K_RGB):
        return "j2k/ycbcr" if compression == APERIO_J2K_YCBCR else "j2k/rgb"
    if compression == JPEG:
        return "jpeg/rgb" if int(page.photometric) == PHOTOMETRIC_RGB else "jpeg/ycbcr"
    return LOSSLESS.get(compression, str(compression))


def _properties(page, vendor: str, levels: list[TileGrid]) -> dict[str, str]:
    """A subset of OpenSlide's property names, so `read_mpp` finds the mpp the same way for both readers."""
    props: dict[str, str] = {"openslide.vendor": vendor, "openslide.level-count": str(len(levels))}
    tags = page.tags
    description = str(page.description or "")
    if description:
        props["tiff.ImageDescription"] = description
        props["openslide.comment"] = description
    for name in ("Software", "Make", "Model", "DateTime", "Artist", "HostComputer", "Copyright"):
        if name in tags:
            props[f"tiff.{name}"] = str(tags[name].value)
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
    unit_name = {1: "none", 2: "inch", 3: "centimeter"}.get(int(unit) if unit is not None else 2, "inch")
    xres = _rational(tags, "XResolution")
    yres = _rational(tags, "YResolution")
    props["tiff.ResolutionUnit"] = unit_name
    if xres:
        props["tiff.XResolution"] = _fmt(xres)
    if yres:
        props["tiff.YResolution"] = _fmt(yres)
    if vendor == "aperio":
        for field in description.split("|")[1:]:
            key, sep, value = field.partition("=")
            if sep:
                props[f"aperio.{key.strip()}"] = value.strip()
        if "aperio.MPP" in props:
            props["openslide.mpp-x"] = props["openslide.mpp-y"] = _fmt(float(props["aperio.MPP"]))
        if "aperio.AppMag" in props:
            props["openslide.objective-power"] = props["aperio.AppMag"]
    elif unit_name in ("centimeter", "inch") and xres and yres:  # as OpenSlide 4 does
        per_unit_um = 1e4 if unit_name == "centimeter" else 25400.0
        props["openslide.mpp-x"] = _fmt(per_unit_um / xres)
        props["openslide.mpp-y"] = _fmt(per_unit_um / yres)
    for i, (lv, ds) in enumerate(zip(levels, _downsamples(tuple((lv.width, lv.height) for lv in levels)))):
        props[f"openslide.level[{i}].downsample"] = str(int(ds)) if ds == int(ds) else repr(ds)
        props[f"openslide.level[{i}].width"] = str(lv.width)
        props[f"openslide.level[{i}].height"] = str(lv.height)
        props[f"openslide.level[{i}].tile-width"] = str(lv.tile_w)
        props[f"openslide.level[{i}].tile-height"] = str(lv.tile_h)
    return props


def _rational(tags, name: str) -> float | None:
    if name not in tags:
        return None
    value = tags[name].value
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else None
    return float(value)


def _fmt(v: float) -> str:
    return f"{v:.6g}"
