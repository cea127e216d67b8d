"""Mammogram reader: every format gives the same brightness sense, normalised by the declared depth."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medconv.errors import InputFileError
from medconv.io.mammo import read_mammogram

RAMP = np.linspace(0.0, 1.0, 24 * 16, dtype=np.float64).reshape(24, 16)


def write_dicom(path: Path, stored: np.ndarray, bits: int = 12, photometric: str = "MONOCHROME2", **tags) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.asarray(stored, "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_and_2_read_with_the_same_brightness_sense(tmp_path: Path) -> None:
    maxval = 2**12 - 1
    mono2 = write_dicom(tmp_path / "m2.dcm", np.round(RAMP * maxval))
    mono1 = write_dicom(tmp_path / "m1.dcm", np.round((1 - RAMP) * maxval), photometric="MONOCHROME1")
    a, b = read_mammogram(mono2), read_mammogram(mono1)
    assert a.pixels.dtype == np.float32 and a.pixels.shape == RAMP.shape
    np.testing.assert_allclose(a.pixels, RAMP, atol=1 / maxval)
    np.testing.assert_allclose(b.pixels, RAMP, atol=1 / maxval)
    assert a.bits_stored == 12


def test_normalised_by_bits_stored_not_by_content(tmp_path: Path) -> None:
    # A 14-bit image whose values only reach 1000 must stay dark, not be stretched to 1.
    path = write_dicom(tmp_path / "dark.dcm", np.full((8, 8), 1000), bits=14)
    np.testing.assert_allclose(read_mammogram(path).pixels, 1000 / (2**14 - 1), rtol=1e-5)


def test_voi_window_is_applied(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 1500, 2000, 2500, 3000, 4095]])
    path = write_dicom(tmp_path / "w.dcm", stored, WindowCenter=2000, WindowWidth=1001)
    pixels = read_mammogram(path).pixels[0]
    assert pixels[0] == 0.0 and pixels[1] == 0.0  # below the window
    assert pixels[-1] == 1.0 and pixels[-2] == 1.0  # above it
    np.testing.assert_allclose(pixels[2:5], [0.0005, 0.5005, 1.0], atol=2e-3)


def test_voi_lut_table_is_applied_and_normalised_by_its_depth(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4, 0, 10]  # 4 entries for stored values 0..3, 10-bit output
    item.LUTData = np.array([0, 100, 1023, 1023], "<u2").tobytes()
    path = write_dicom(tmp_path / "lut.dcm", np.array([[0, 1, 2, 3]]), bits=2, VOILUTSequence=[item])
    np.testing.assert_allclose(read_mammogram(path).pixels[0], [0.0, 100 / 1023, 1.0, 1.0], rtol=1e-5)


def test_monochrome1_is_inverted_after_the_window(tmp_path: Path) -> None:
    stored = np.array([[500, 2000, 3500]])
    path = write_dicom(tmp_path / "w1.dcm", stored, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=1001)
    np.testing.assert_allclose(read_mammogram(path).pixels[0], [1.0, 0.4995, 0.0], atol=2e-3)


def test_rescale_is_applied_before_the_window(tmp_path: Path) -> None:
    # Modality value = 2 * stored - 100; the window is in modality units, centred on 1900 (stored 1000).
    stored = np.array([[750, 1000, 1250]])
    tags = {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 1900, "WindowWidth": 1001}
    pixels = read_mammogram(write_dicom(tmp_path / "r.dcm", stored, **tags)).pixels[0]
    np.testing.assert_allclose(pixels, [0.0005, 0.5005, 1.0], atol=2e-3)


def test_rescale_without_window_keeps_the_stored_range(tmp_path: Path) -> None:
    maxval = 2**16 - 1
    path = write_dicom(tmp_path / "s.dcm", np.round(RAMP * maxval), bits=16, RescaleSlope=0.5, RescaleIntercept=7)
    np.testing.assert_allclose(read_mammogram(path).pixels, RAMP, atol=2 / maxval)


def test_metadata_is_read(tmp_path: Path) -> None:
    tags = {"PixelSpacing": [0.07, 0.065], "ImageLaterality": "R", "ViewPosition": "MLO"}
    m = read_mammogram(write_dicom(tmp_path / "meta", np.zeros((4, 4)), bits=14, **tags))  # no suffix: DICOM
    assert m.pixel_spacing_mm == (0.07, 0.065)
    assert (m.laterality, m.view, m.bits_stored) == ("R", "MLO", 14)
    m = read_mammogram(write_dicom(tmp_path / "imager.dcm", np.zeros((4, 4)), ImagerPixelSpacing=[0.1, 0.1]))
    assert m.pixel_spacing_mm == (0.1, 0.1) and m.laterality is None and m.view is None
    assert read_mammogram(write_dicom(tmp_path / "none.dcm", np.zeros((4, 4)))).pixel_spacing_mm is None


@pytest.mark.parametrize("dtype, maxval", [(np.uint8, 255), (np.uint16, 65535)])
def test_png_normalised_by_its_bit_depth(tmp_path: Path, dtype, maxval: int) -> None:
    values = np.round(RAMP * maxval).astype(dtype)
    path = tmp_path / "im.png"
    cv2.imwrite(str(path), values)
    m = read_mammogram(path)
    np.testing.assert_allclose(m.pixels, RAMP, atol=1 / maxval)
    assert m.bits_stored == np.dtype(dtype).itemsize * 8 and m.pixel_spacing_mm is None


def _with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk (one grey entry) before the first IDAT, as a DICOM-to-PNG converter writes it."""
    pos = 8
    while png[pos + 4 : pos + 8] != b"IDAT":
        pos += 12 + int.from_bytes(png[pos : pos + 4], "big")
    body = b"sBIT" + bytes([bits])
    return png[:pos] + (1).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big") + png[pos:]


def _png(path: Path, values: np.ndarray, sbit: int | None = None) -> Path:
    ok, buf = cv2.imencode(".png", values)
    assert ok
    path.write_bytes(buf.tobytes() if sbit is None else _with_sbit(buf.tobytes(), sbit))
    return path


@pytest.mark.parametrize("sbit", [None, 12], ids=["inferred", "sBIT"])
def test_12_bit_values_in_a_16_bit_png_use_the_full_range(tmp_path: Path, sbit: int | None) -> None:
    # Regression: raw 12-bit detector values in a 16-bit PNG were divided by 65535 (maximum 0.06).
    path = _png(tmp_path / "im12.png", np.round(RAMP * 4095).astype(np.uint16), sbit)
    m = read_mammogram(path)
    assert m.pixels.max() == pytest.approx(1.0) and m.bits_stored == 12
    np.testing.assert_allclose(m.pixels, RAMP, atol=1 / 4095)


@pytest.mark.parametrize("bits", [10, 14])
def test_png_depth_inferred_from_the_values_without_sbit(tmp_path: Path, bits: int) -> None:
    maxval = 2**bits - 1
    m = read_mammogram(_png(tmp_path / "im.png", np.round(RAMP * maxval).astype(np.uint16)))
    assert m.bits_stored == bits
    np.testing.assert_allclose(m.pixels, RAMP, atol=1 / maxval)


def test_sbit_with_samples_scaled_as_the_png_spec_asks(tmp_path: Path) -> None:
    # 12-bit precision scaled to the full 16-bit range (what the spec prescribes): not stretched again.
    scaled = np.round(np.round(RAMP * 4095) * (65535 / 4095)).astype(np.uint16)
    m = read_mammogram(_png(tmp_path / "scaled.png", scaled, sbit=12))
    assert m.bits_stored == 12
    np.testing.assert_allclose(m.pixels, RAMP, atol=1 / 4095)


def test_sbit_16_keeps_a_dark_16_bit_png_dark(tmp_path: Path) -> None:
    dark = np.full((8, 8), 3000, np.uint16)
    assert read_mammogram(_png(tmp_path / "inferred.png", dark)).pixels.max() == pytest.approx(3000 / 4095)
    pinned = read_mammogram(_png(tmp_path / "pinned.png", dark, sbit=16))
    assert pinned.bits_stored == 16 and pinned.pixels.max() == pytest.approx(3000 / 65535)


def test_8_bit_png_with_sbit_of_its_own_depth_is_unchanged(tmp_path: Path) -> None:
    values = np.round(RAMP * 100).astype(np.uint8)  # dark, but 8-bit PNGs are never re-judged
    for sbit in (None, 8):
        m = read_mammogram(_png(tmp_path / f"im{sbit}.png", values, sbit))
        assert m.bits_stored == 8
        np.testing.assert_allclose(m.pixels, values / 255.0, atol=1e-6)


def test_pgm_normalised_by_its_maxval(tmp_path: Path) -> None:
    values = np.round(RAMP * 4095).astype(">u2")
    binary = tmp_path / "b.pgm"
    binary.write_bytes(b"P5\n# a comment\n16 24\n4095\n" + values.tobytes())
    m = read_mammogram(binary)
    np.testing.assert_allclose(m.pixels, RAMP, atol=1 / 4095)
    assert m.bits_stored == 12
    ascii_ = tmp_path / "a.pgm"
    ascii_.write_text("P2\n3 1\n1023\n0 512 1023\n")
    np.testing.assert_allclose(read_mammogram(ascii_).pixels, [[0.0, 512 / 1023, 1.0]], rtol=1e-6)


def _truncated_dicom(tmp_path: Path) -> Path:
    path = write_dicom(tmp_path / "trunc.dcm", np.zeros((64, 64)))
    path.write_bytes(path.read_bytes()[:-3000])
    return path


def _truncated_png(tmp_path: Path) -> Path:
    path = tmp_path / "trunc.png"
    cv2.imwrite(str(path), (np.random.default_rng(0).random((64, 64)) * 65535).astype(np.uint16))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def _corrupt_dicom(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    return path


def _text_as_dcm(tmp_path: Path) -> Path:
    path = tmp_path / "notes.dcm"
    path.write_text("patient notes, not an image\n" * 20)
    return path


def _truncated_pgm(tmp_path: Path) -> Path:
    path = tmp_path / "trunc.pgm"
    path.write_bytes(b"P5 64 64 65535\n" + b"\0" * 100)
    return path


def _unsupported(tmp_path: Path) -> Path:
    path = tmp_path / "image.jpg"
    path.write_text("not really a jpeg")
    return path


@pytest.mark.parametrize(
    "make",
    [_truncated_dicom, _truncated_png, _corrupt_dicom, _text_as_dcm, _truncated_pgm, _unsupported],
    ids=lambda f: f.__name__.strip("_"),
)
def test_bad_files_raise_input_file_error_naming_the_file(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    with pytest.raises(InputFileError, match=path.name):
        read_mammogram(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="missing.dcm"):
        read_mammogram(tmp_path / "missing.dcm")
