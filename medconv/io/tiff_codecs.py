"""Tile decoders for the fast TIFF reader: the same pixels OpenSlide's decoders give, or UnsupportedTiff."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

JPEG = 7
APERIO_J2K_YCBCR, APERIO_J2K_RGB = 33003, 33005
# Lossless codecs: any correct decoder gives the same pixels as libtiff does inside OpenSlide.
LOSSLESS = {1: "none", 5: "lzw", 8: "deflate", 32946: "deflate", 32773: "packbits"}
PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR = 2, 6


class UnsupportedTiff(Exception):
    """Internal: this file needs OpenSlide (never reaches the user)."""


def decoder(page, vendor: str) -> Callable[[bytes], np.ndarray]:
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


def codec_name(page) -> str:
    compression = int(page.compression)
    if compression in (APERIO_J2K_YCBCR, APERIO_J2K_RGB):
        return "j2k/ycbcr" if compression == APERIO_J2K_YCBCR else "j2k/rgb"
    if compression == JPEG:
        return "jpeg/rgb" if int(page.photometric) == PHOTOMETRIC_RGB else "jpeg/ycbcr"
    return LOSSLESS.get(compression, str(compression))
