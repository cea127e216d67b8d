"""Say what a file is when no slide reader opens it, and what to do about it.

"Corrupt, truncated or not a slide format" sends a user hunting; "16-bit greyscale TIFF, not a brightfield
slide" or "DICOM label image, tile the VOLUME instances" tells them the fix. `probe` reads headers only
(magic bytes, tifffile, pydicom, PIL) and never raises; it also decides whether the one-level
`PlainImageReader` can serve the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"  # DICOM VL Whole Slide Microscopy Image Storage
#: decoded size above which a plain image that cannot be memory-mapped is refused (each worker holds a copy)
MAX_PLAIN_BYTES = 4 * 2**30
CONVERT = "`vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg --Q 90`"
PLAIN_ADVICE = (
    "OpenSlide reads only tiled slide formats; open_slide(path, backend='auto') reads it as a one-level slide "
    "(`medconv tile` does, given --slide-mpp when the file has no mpp)"
)


@dataclass(frozen=True)
class Probe:
    """What a file is (`what`), what to do (`advice`), and `plain` = "tiff" | "pil" when PlainImageReader reads it."""

    what: str
    advice: str
    plain: str | None = None
    cite_reason: bool = False  # the reader's own error says something this description does not

    def message(self, path: str | Path, reason: str | None = None) -> str:
        why = f" ({reason})" if reason and self.cite_reason else ""
        return f"{path}: {self.what}{why}: {self.advice}"


def diagnose(path: str | Path, reason: str | None = None) -> str:
    """One message naming the file, what it is and what to do; `reason` is the reader's error, cited when useful."""
    return probe(path).message(path, reason)


def probe(path: str | Path) -> Probe:
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as err:
        return Probe(f"cannot be read ({err.strerror})", "check the path and its permissions")
    if size == 0:
        return Probe("empty file (0 bytes)", "the copy or download did not finish; copy the file again")
    try:
        if head[:4] in TIFF_MAGIC:
            return _probe_tiff(path, size)
        if head[128:132] == b"DICM":
            return _probe_dicom(path)
        return _probe_pil(path, head)
    except Exception as err:
        return Probe(f"unreadable ({type(err).__name__}: {err})", _CORRUPT, cite_reason=True)


_CORRUPT = "the file is corrupt, truncated or not a slide format; copy it again or check that it opens in QuPath"


@contextmanager
def no_pixel_limit() -> Iterator[None]:
    """PIL refuses images over ~179 MP as decompression bombs; MAX_PLAIN_BYTES is the limit that applies here."""
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# --------------------------------------------------------------------------- TIFF


def _probe_tiff(path: Path, size: int) -> Probe:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            n_pages = len(tif.pages)
            series = tif.series[0] if tif.series else None
            levels = len(series.levels) if series is not None else 1
            axes = series.axes if series is not None else ""
            shape = series.shape if series is not None else ()
            ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts, strict=True) if c]
            info = {
                "w": page.imagewidth, "h": page.imagelength, "bits": page.bitspersample, "spp": page.samplesperpixel,
                "photometric": int(page.photometric), "tiled": page.is_tiled, "depth": page.imagedepth,
                "kind": page.dtype.kind if page.dtype is not None else "?",
                "memmap": page.is_memmappable and page.planarconfig == 1 and page.samplesperpixel == 3,
                "extras": len(page.extrasamples),
            }
    except Exception as err:
        return Probe(f"truncated or corrupt TIFF ({err})", "copy or export the file again")
    if ends and max(ends) > size:
        return Probe(
            f"truncated TIFF: its image data runs to byte {max(ends)} but the file has {size}",
            "the copy or download did not finish; copy the file again",
        )
    w, h, bits, spp = info["w"], info["h"], info["bits"], info["spp"]
    colour = _TIFF_COLOURS.get(info["photometric"], f"photometric {info['photometric']}")
    if info["extras"] and colour in ("greyscale", "RGB"):
        colour += "A" if colour == "RGB" else "+alpha"
    layout = "tiled" if info["tiled"] else "strip"
    channels = shape[axes.index("C")] if "C" in axes else (spp - info["extras"])
    if info["depth"] > 1 or any(a in axes for a in "ZT"):
        return Probe(f"{layout} TIFF {w}x{h} with z-planes or time points (axes {axes})",
                     "medconv tile reads 2-D brightfield slides; export the plane to tile as an RGB TIFF")
    if channels > 4 or (channels > 1 and colour.startswith("greyscale")):
        return Probe(f"multi-channel TIFF {w}x{h} ({channels} channels, axes {axes}): a fluorescence or multiplex image,"
                     " not a brightfield RGB slide",
                     "medconv tile reads brightfield RGB slides; export an RGB rendering (e.g. from QuPath) to tile it")
    if info["kind"] == "f" or bits > 8:
        kind = "floating-point" if info["kind"] == "f" else f"{bits}-bit"
        if colour.startswith("greyscale"):
            return Probe(
                f"{kind} greyscale TIFF {w}x{h}: not a brightfield slide (a mammogram or fluorescence channel?)",
                "medconv tile reads 8-bit RGB slides; mammograms go through the mammography pipeline (docs/data.md); "
                "to tile it anyway convert it to 8-bit RGB first, e.g. `vips scale IN grey8.tif` then "
                "`vips colourspace grey8.tif OUT.tif srgb`",
            )
        return Probe(f"{kind} {colour} TIFF {w}x{h}",
                     "medconv tile reads 8-bit RGB slides; convert it to 8 bits, e.g. `vips cast IN OUT.tif uchar --shift`")
    if bits == 1:
        return Probe(f"black-and-white (1-bit) TIFF {w}x{h}: a scanned document or a mask, not a slide",
                     "give medconv tile the slide itself")
    if colour not in ("greyscale", "greyscale+alpha", "RGB", "RGBA", "RGB (YCbCr)", "palette"):
        return Probe(f"8-bit {colour} TIFF {w}x{h}", "convert it to RGB, e.g. `vips colourspace IN OUT.tif srgb`")
    vendor = _openslide_vendor(path)
    if vendor is not None:  # OpenSlide claims it: a damaged slide, not a plain image to read some other way
        return Probe(f"{vendor} slide {w}x{h} that OpenSlide cannot open",
                     "the file is damaged or incomplete; copy it again, or check that it opens in the scanner's viewer",
                     cite_reason=True)
    pyramid = ("without a pyramid" if levels == 1 and n_pages == 1 else f"with a {levels}-level pyramid (level 0 is read)"
               if levels > 1 else f"with {n_pages} pages (the first is read)")
    what = f"plain ({layout}) {colour} TIFF {w}x{h} {pyramid}"
    if not info["memmap"] and w * h * 3 > MAX_PLAIN_BYTES:
        return Probe(f"{what}, {w * h * 3 / 2**30:.1f} GiB decoded",
                     f"too large to read whole into memory; convert it to a tiled pyramidal TIFF: {CONVERT}")
    return Probe(what, PLAIN_ADVICE, plain="tiff")


def _openslide_vendor(path: Path) -> str | None:
    try:
        import openslide

        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


_TIFF_COLOURS = {0: "greyscale", 1: "greyscale", 2: "RGB", 3: "palette", 4: "mask", 5: "CMYK", 6: "RGB (YCbCr)",
                 8: "CIELab", 32844: "LogL", 32845: "LogLuv", 34892: "linear raw", 32803: "colour-filter-array (raw)"}


# --------------------------------------------------------------------------- DICOM


def _probe_dicom(path: Path) -> Probe:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        return Probe(f"truncated or corrupt DICOM ({err})", "copy or export the file again")
    sop = str(ds.get("SOPClassUID", ""))
    size = f"{ds.get('Columns', '?')}x{ds.get('Rows', '?')}"
    if sop != VL_WSI:
        name = getattr(ds.get("SOPClassUID"), "name", "") or sop or "without SOP class"
        modality = str(ds.get("Modality", "?"))
        advice = "medconv tile reads DICOM VL Whole Slide Microscopy images"
        if modality in ("MG", "DX", "CR"):
            advice = "mammograms are read from a manifest by the mammography pipeline (docs/data.md), not tiled as slides"
        return Probe(f"DICOM {name} (modality {modality}) {size}, not a whole-slide image", advice)
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    flavour = image_type[2] if len(image_type) > 2 else ""
    if flavour in ("LABEL", "OVERVIEW", "THUMBNAIL"):
        return Probe(
            f"DICOM {flavour.lower()} image (ImageType {flavour}) {size} without a pyramid, not a slide",
            "tile the VOLUME instances of the series; OpenSlide 4 finds them (and this image) when all instances "
            "of the series are in one folder, so give that folder or any VOLUME file in it",
        )
    import openslide

    facts = [flavour or "no ImageType"]
    if "TotalPixelMatrixColumns" in ds and "TotalPixelMatrixRows" in ds:
        facts.append(f"{ds.TotalPixelMatrixColumns}x{ds.TotalPixelMatrixRows} px")
    facts.append(f"{ds.get('NumberOfFrames', 1)} frame(s)")
    facts.append(getattr(getattr(ds.get("file_meta", None), "TransferSyntaxUID", None), "name", "unknown transfer syntax"))
    return Probe(
        f"DICOM WSI ({', '.join(facts)}) that OpenSlide {openslide.__library_version__} rejects",
        "OpenSlide 4 reads a DICOM slide from all instances of its series in one folder: keep every level of the "
        "series together and give that folder (or any file in it); if the series is complete, the file breaks the "
        "DICOM WSI standard in the way quoted -- re-export it",
        cite_reason=True,
    )


# --------------------------------------------------------------------------- PNG, JPEG and other images PIL reads


def _probe_pil(path: Path, head: bytes) -> Probe:
    from PIL import Image, UnidentifiedImageError

    try:
        with no_pixel_limit(), Image.open(path) as im:
            fmt, mode, (w, h) = im.format or "image", im.mode, im.size
    except UnidentifiedImageError:
        kind = "PNG" if head.startswith(PNG_MAGIC) else "JPEG" if head.startswith(JPEG_MAGIC) else None
        if kind:
            return Probe(f"truncated or corrupt {kind}", "copy or export the file again")
        return Probe(f"not a format medconv reads (neither TIFF, DICOM, PNG nor JPEG; starts with {head[:8]!r})",
                     _CORRUPT, cite_reason=True)
    except Exception as err:
        return Probe(f"truncated or corrupt image ({err})", "copy or export the file again")
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        depth = "16-bit" if mode.startswith("I;16") else "32-bit"
        return Probe(f"{depth} greyscale {fmt} {w}x{h}: not a brightfield slide (a mammogram or fluorescence channel?)",
                     "medconv tile reads 8-bit RGB slides; mammograms go through the mammography pipeline (docs/data.md)")
    if mode == "1":
        return Probe(f"black-and-white (1-bit) {fmt} {w}x{h}: a mask or a scanned document, not a slide",
                     "give medconv tile the slide itself")
    colour = {"L": "greyscale", "LA": "greyscale+alpha", "P": "palette", "PA": "palette+alpha"}.get(mode, mode)
    what = f"plain {colour} {fmt} {w}x{h} without a pyramid"
    if w * h * 3 > MAX_PLAIN_BYTES:
        return Probe(f"{what}, {w * h * 3 / 2**30:.1f} GiB decoded",
                     f"too large to read whole into memory; convert it to a tiled pyramidal TIFF: {CONVERT}")
    return Probe(what, PLAIN_ADVICE, plain="pil")
