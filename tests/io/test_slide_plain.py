"""Plain images as one-level slides, and what open_slide says about files no reader opens."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medconv.errors import InputFileError
from medconv.io.diagnose import probe
from medconv.io.plain_image import PlainImageReader
from medconv.io.reader import SlideReader
from medconv.io.slide import OpenSlideReader, open_slide

VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"


def write_wsi_dicom(path: Path, flavour: str = "VOLUME", total: bool = True) -> Path:
    """A one-frame 60x40 VL Whole Slide Microscopy instance (ImageType ORIGINAL/PRIMARY/<flavour>/NONE)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_WSI
    meta.MediaStorageSOPInstanceUID = sop = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = VL_WSI, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ImageType = "SM", ["ORIGINAL", "PRIMARY", flavour, "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 40, 60, 1
    if total:
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = 60, 40
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.full((40, 60, 3), 200, np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)


def test_strip_tiff_is_a_one_level_slide(tmp_path, rgb):
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=16)
    with open_slide(path) as reader:
        assert isinstance(reader, PlainImageReader) and isinstance(reader, SlideReader)
        assert reader.level_dimensions == ((200, 150),) and reader.level_downsamples == (1.0,)
        assert reader.mpp is None  # no resolution tags: the caller must give it
        assert reader.description == "plain (strip) RGB TIFF 200x150 without a pyramid"
        assert np.array_equal(reader.read_region((10, 20), 0, (50, 40)), rgb[20:60, 10:60])
        edge = reader.read_region((180, -5), 0, (30, 10))  # outside the image is white
        assert (edge[:5] == 255).all() and (edge[:, 20:] == 255).all()
        assert np.array_equal(edge[5:, :20], rgb[:5, 180:])
        thumb = reader.get_thumbnail((50, 50))
        assert thumb.shape == (38, 50, 3) and thumb.dtype == np.uint8
        assert abs(float(thumb.mean()) - float(rgb.mean())) < 2  # area average keeps the mean
        again = pickle.loads(pickle.dumps(reader))  # DataLoader workers reopen it
        assert np.array_equal(again.read_region((0, 0), 0, (200, 150)), rgb)
    with open_slide(path, mpp=0.5) as reader:
        assert reader.mpp == 0.5


def test_plain_mpp_from_tags_but_not_from_print_dpi(tmp_path, rgb):
    scan = tmp_path / "scan.tif"
    tifffile.imwrite(scan, rgb, photometric="rgb", resolution=(40000, 40000), resolutionunit="CENTIMETER")
    with open_slide(scan) as reader:
        assert reader.mpp == pytest.approx(0.25)
    printed = tmp_path / "printed.tif"
    tifffile.imwrite(printed, rgb, photometric="rgb", resolution=(300, 300), resolutionunit="INCH")
    with open_slide(printed) as reader:  # 300 dpi would be 84.7 um/px: a print setting, not a guess to act on
        assert reader.mpp is None and "300 dpi" in reader.mpp_note


def test_png_jpeg_grey_and_alpha(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    smooth = np.dstack([*np.meshgrid(np.linspace(40, 220, 200), np.linspace(60, 200, 150)), np.full((150, 200), 128.0)])
    smooth = smooth.astype(np.uint8)  # noise would not survive JPEG; a gradient does
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :, 3] = 0  # transparent rows show as white
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    with open_slide(tmp_path / "a.png") as reader:
        assert np.array_equal(reader.read_region((0, 0), 0, (200, 150)), rgb)
    with open_slide(tmp_path / "a.jpg") as reader:
        assert np.abs(reader.read_region((0, 0), 0, (200, 150)).astype(int) - smooth).mean() < 2
        assert reader.description == "plain RGB JPEG 200x150 without a pyramid"
    with open_slide(tmp_path / "alpha.png") as reader:
        region = reader.read_region((0, 0), 0, (200, 150))
        assert (region[:10] == 255).all() and np.array_equal(region[10:], rgb[10:])
    with open_slide(tmp_path / "grey.png") as reader:
        region = reader.read_region((0, 0), 0, (200, 150))
        assert region.shape == (150, 200, 3) and np.array_equal(region[..., 2], rgb[..., 0])


def test_sixteen_bit_greyscale_is_named_not_called_corrupt(tmp_path):
    path = tmp_path / "mammo.tif"
    tifffile.imwrite(path, np.zeros((300, 200), np.uint16))
    with pytest.raises(InputFileError) as err:
        open_slide(path)
    message = str(err.value)
    assert str(path) in message and "16-bit greyscale TIFF 200x300" in message
    assert "8-bit RGB" in message and "corrupt" not in message
    Image.fromarray(np.zeros((30, 20), np.uint16)).save(tmp_path / "fluo.png")
    with pytest.raises(InputFileError, match="16-bit greyscale PNG"):
        open_slide(tmp_path / "fluo.png")


def test_dicom_label_and_rejected_wsi(tmp_path):
    (tmp_path / "a").mkdir()
    label = write_wsi_dicom(tmp_path / "a" / "instance.dcm", "LABEL")
    with pytest.raises(InputFileError) as err:
        open_slide(label)
    assert "DICOM label image (ImageType LABEL)" in str(err.value) and "VOLUME instances" in str(err.value)
    (tmp_path / "b").mkdir()
    broken = write_wsi_dicom(tmp_path / "b" / "instance.dcm", total=False)  # no TotalPixelMatrix size
    with pytest.raises(InputFileError) as err:
        open_slide(broken)
    message = str(err.value)
    assert "DICOM WSI (VOLUME" in message and "that OpenSlide" in message and "rejects" in message
    assert "level dimensions" in message  # OpenSlide's own reason is quoted
    assert "all instances of its series in one folder" in message


def test_damaged_files_are_still_called_damaged(tmp_path, rgb):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, rgb, photometric="rgb")
    truncated = tmp_path / "cut.tif"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    with pytest.raises(InputFileError, match="cut.tif: truncated TIFF"):
        open_slide(truncated)
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(InputFileError, match="empty file"):
        open_slide(tmp_path / "empty.svs")
    (tmp_path / "noise.svs").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(InputFileError, match="noise.svs: not a format .* corrupt, truncated or not a slide format"):
        open_slide(tmp_path / "noise.svs")
    Image.fromarray(rgb).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="cut.png: plain RGB PNG .* truncated or corrupt"):
        open_slide(tmp_path / "cut.png")


def test_openslide_backend_names_what_it_refuses(tmp_path, rgb):
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    with pytest.raises(InputFileError, match="plain \\(strip\\) RGB TIFF .*backend='auto'"):
        open_slide(path, backend="openslide")
    with open_slide(path, backend="plain") as reader:
        assert reader.dimensions == (200, 150)
    assert probe(path).plain == "tiff"


@pytest.mark.realdata
def test_real_plain_images_and_dicom(realdata):
    with open_slide(realdata / "ihc.png") as reader:
        assert isinstance(reader, PlainImageReader) and reader.dimensions == (512, 512)
        assert reader.mpp is None  # its 96 dpi tag is a screen setting
        assert reader.read_region((0, 0), 0, (512, 512)).std() > 10
    with open_slide(realdata / "tiles" / "no-tissue.png") as reader:  # RGBA
        assert reader.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
    with open_slide(realdata / "multiframe_camelyon_challenge_image.dcm") as reader:
        assert isinstance(reader, OpenSlideReader) and reader.dimensions == (1152, 700)
