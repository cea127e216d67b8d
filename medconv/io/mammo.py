"""Mammogram reader: DICOM, 8/16-bit PNG and PGM into one float image with physical metadata.

Every format comes out the same way so that preprocessing never needs to know where pixels came
from: float32 in [0, 1], brighter = denser (the MONOCHROME2 sense), normalised by the image's real bit
depth (never by its own min/max, which would make intensities depend on content). DICOM declares it
(BitsStored), PGM too (maxval). A 16-bit PNG often holds 10-14-bit detector values unscaled, so dividing
by 65535 would leave a 12-bit mammogram at most 0.06: its depth comes from the sBIT chunk when present,
else from the smallest of 10/12/14/16 bits that holds its values (see `png_value_range`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medconv.errors import InputFileError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ""}


@dataclass
class Mammogram:
    """One mammographic view. `pixel_spacing_mm` is (row, col) mm per pixel, None when the file has none."""

    pixels: np.ndarray
    path: Path
    pixel_spacing_mm: tuple[float, float] | None
    laterality: str | None
    view: str | None
    bits_stored: int


def read_mammogram(path: str | Path) -> Mammogram:
    """Read a DICOM, PNG or PGM file; the format is told by its first bytes, not by its suffix.

    Raises InputFileError, naming the file, when it is missing, truncated, corrupt or unsupported.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"mammogram {path} does not exist (or is not a file): check the path in the manifest")
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as err:
        raise InputFileError(f"cannot read mammogram {path}: {err}") from err
    if head.startswith(PNG_SIGNATURE):
        return _read_png(path)
    if head[:2] in (b"P2", b"P5"):
        return _read_pgm(path)
    if head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom(path, has_preamble=head[128:132] == b"DICM")
    raise InputFileError(
        f"unsupported mammogram file {path}: expected DICOM, PNG (8/16-bit) or PGM; convert it to one of these"
    )


# --------------------------------------------------------------------------- DICOM


def _read_dicom(path: Path, has_preamble: bool) -> Mammogram:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path, force=not has_preamble)
    except Exception as err:  # pydicom raises many types for garbage input
        raise InputFileError(f"{path} is not a readable DICOM file ({err}); is it corrupt or not a DICOM?") from err
    if "PixelData" not in ds:
        raise InputFileError(f"DICOM {path} has no pixel data: is it a structured report or a corrupt file?")
    try:
        stored = ds.pixel_array
    except Exception as err:
        raise InputFileError(
            f"cannot decode the pixels of DICOM {path} ({err}); the file may be truncated, or compressed with a "
            "codec that needs an extra package (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"
        ) from err
    if stored.ndim != 2:
        raise InputFileError(
            f"DICOM {path} has pixel array shape {stored.shape}; a single-frame greyscale mammogram is expected"
        )
    bits = int(ds.get("BitsStored", 16) or 16)
    lo, hi = _modality_range(ds, bits)
    values = apply_modality_lut(stored, ds)
    if "VOILUTSequence" in ds and ds.VOILUTSequence:
        # A VOI LUT table maps into [0, 2**n - 1] with n from its descriptor.
        values = apply_voi_lut(values, ds, prefer_lut=True)
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        # pydicom's windowing maps the window onto the modality output range [lo, hi].
        values = apply_voi_lut(values, ds, prefer_lut=False)
    pixels = _normalise(values, lo, hi)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        pixels = 1.0 - pixels
    return Mammogram(
        pixels=pixels,
        path=path,
        pixel_spacing_mm=_spacing(ds),
        laterality=_laterality(ds),
        view=(str(ds.get("ViewPosition", "")).strip().upper() or None),
        bits_stored=bits,
    )


def _modality_range(ds, bits: int) -> tuple[float, float]:
    """Range of values the modality LUT can produce: what 0 and 1 stand for after normalising."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    a, b = lo * slope + intercept, hi * slope + intercept
    return min(a, b), max(a, b)


def _spacing(ds) -> tuple[float, float] | None:
    # Mammography files often carry only ImagerPixelSpacing (at the detector), which is what we want.
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    return None


def _laterality(ds) -> str | None:
    for key in ("ImageLaterality", "Laterality"):
        value = str(ds.get(key, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


# --------------------------------------------------------------------------- PNG / PGM


def _read_png(path: Path) -> Mammogram:
    data = path.read_bytes()
    sbit = _png_significant_bits(path, data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputFileError(f"PNG {path} cannot be decoded: it is corrupt; re-export it")
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[..., :3]
        if not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])):
            raise InputFileError(f"PNG {path} is a colour image; a greyscale mammogram is expected")
        image = image[..., 0]
    bits, white = png_value_range(image, 16 if image.dtype == np.uint16 else 8, sbit)
    return Mammogram(_normalise(image, 0, white), path, None, None, None, bits)


def png_value_range(image: np.ndarray, depth: int, sbit: int | None) -> tuple[int, float]:
    """(significant bits, the stored value that means 1.0) of a PNG's samples.

    With sBIT = s < depth: the PNG spec stores samples scaled to the full depth and s records the
    original precision, but many DICOM-to-PNG converters store the raw values; values that fit in s bits
    are taken as raw (white = 2**s - 1), larger ones as scaled (white = 2**depth - 1). Without sBIT an
    8-bit image is 8-bit; a 16-bit one is taken to hold the smallest of 10/12/14/16 bits that its maximum
    fits in. That inference can misjudge a mostly dark genuine 16-bit image (maximum under 2**14 = 25% of
    the range) as 14-bit or less and brighten it; write sBIT = 16 into such files to pin the depth.
    """
    top = int(image.max()) if image.size else 0
    if sbit is not None and sbit < depth:
        return sbit, float(2**sbit - 1 if top < 2**sbit else 2**depth - 1)
    if sbit is not None or depth == 8:
        return depth, float(2**depth - 1)
    bits = next(b for b in (10, 12, 14, 16) if top < 2**b)
    return bits, float(2**bits - 1)


def _png_significant_bits(path: Path, data: bytes) -> int | None:
    """The grey sBIT value (None when absent or invalid), checking every chunk's CRC on the way: libpng may
    decode a truncated file into a partly black image without an error."""
    pos, depth, colour, sbit = len(PNG_SIGNATURE), 8, 0, None
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            break
        crc = int.from_bytes(data[end - 4 : end], "big")
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise InputFileError(f"PNG {path} is corrupt (bad checksum in chunk {kind!r}); re-export or re-download it")
        body = data[pos + 8 : end - 4]
        if kind == b"IHDR" and len(body) >= 10:
            depth, colour = body[8], body[9]
        elif kind == b"sBIT" and body:
            # Grey (types 0, 4) has one grey entry; RGB (2, 6) and palette (3) one per channel.
            sbit = max(body[:3]) if colour in (2, 3, 6) else body[0]
        elif kind == b"IEND":
            sample_depth = 8 if colour == 3 else depth
            return sbit if sbit is not None and 0 < sbit <= sample_depth else None
        pos = end
    raise InputFileError(f"PNG {path} is truncated (no end chunk); re-export or re-download it")


def _read_pgm(path: Path) -> Mammogram:
    data = path.read_bytes()
    magic = data[:2]
    tokens: list[bytes] = []
    pos = 2
    while len(tokens) < 3:  # width, height, maxval; comments start with '#'
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if pos < len(data) and data[pos : pos + 1] == b"#":
            pos = data.find(b"\n", pos)
            pos = len(data) if pos < 0 else pos
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise InputFileError(f"PGM {path} has an incomplete header; the file is truncated or corrupt")
        tokens.append(data[start:pos])
    try:
        width, height, maxval = (int(t) for t in tokens)
    except ValueError as err:
        raise InputFileError(f"PGM {path} has a malformed header {tokens!r}") from err
    if width <= 0 or height <= 0 or not 0 < maxval < 65536:
        raise InputFileError(f"PGM {path} has an invalid header (size {width}x{height}, maxval {maxval})")
    count = width * height
    if magic == b"P5":
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        body = data[pos + 1 :]  # exactly one whitespace byte after maxval
        if len(body) < count * dtype.itemsize:
            need = count * dtype.itemsize
            raise InputFileError(f"PGM {path} is truncated: {len(body)} of {need} pixel bytes present")
        image = np.frombuffer(body, dtype, count).reshape(height, width)
    else:
        values = data[pos:].split()
        if len(values) < count:
            raise InputFileError(f"PGM {path} is truncated: {len(values)} of {count} values present")
        try:
            image = np.array([int(v) for v in values[:count]], np.int64).reshape(height, width)
        except ValueError as err:
            raise InputFileError(f"PGM {path} has a non-numeric pixel value") from err
    bits = max(1, math.ceil(math.log2(maxval + 1)))
    return Mammogram(_normalise(image, 0, maxval), path, None, None, None, bits)


def _normalise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    out = (np.asarray(values, np.float32) - np.float32(lo)) / np.float32(span)
    return np.clip(out, 0.0, 1.0, out=out)
