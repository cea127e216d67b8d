"""`medconv tile` on real-world files that are not pyramidal slides: plain images tile as one level, the
rest fail with what the file is and what to do, and non-slide files in a folder are listed as skipped."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from PIL import Image

from medconv.io.png import read_mask_png
from medconv.tiling.cli import main
from medconv.tiling.coords_store import read_coords
from medconv.tiling.geometry import grid_in_mask

SMALL = ["--target-mpp", "1.0", "--tile-size", "64", "--workers", "1"]


def _summary(out) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv") as f:
        return {row["slide"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def tissue_rgb() -> np.ndarray:
    from medconv.demo.wsi import render_slide

    return render_slide(np.random.default_rng(1), 640, 480, tumour=False, pen=False).rgb


def _write_label_dicom(path) -> None:
    """A VL WSI label instance (ImageType LABEL), the only file of its series in its folder."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    wsi = "1.2.840.10008.5.1.4.1.1.77.1.6"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = wsi, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = wsi, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = 40, 60, 1, 40, 60
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.full((40, 60, 3), 230, np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_strip_tiff_tiles_as_one_level_given_slide_mpp(tmp_path, tissue_rgb):
    slide = tmp_path / "in" / "export.tif"
    slide.parent.mkdir()
    tifffile.imwrite(slide, tissue_rgb, photometric="rgb", rowsperstrip=32)  # strips: OpenSlide refuses it
    out = tmp_path / "out"
    assert main([str(slide), "--out", str(out), *SMALL]) == 1  # no mpp in the file: ask, never guess
    error = _summary(out)["export"]["error"]
    assert "plain (strip) RGB TIFF 640x480 without a pyramid" in error and str(slide) in error
    assert "pass --slide-mpp to tile it as a one-level slide" in error and "corrupt" not in error

    assert main([str(slide), "--out", str(out), *SMALL, "--slide-mpp", "0.5"]) == 0
    row = _summary(out)["export"]
    assert row["status"] == "ok" and float(row["mpp"]) == 0.5
    coords, attrs = read_coords(out / "export.h5")
    assert (attrs["patch_level"], attrs["level_downsample"], attrs["patch_size_level0"]) == (0, 1.0, 128)
    assert (attrs["slide_width"], attrs["slide_height"]) == (640, 480)
    mask, ds = read_mask_png(out / "export_mask.png")
    expected, _ = grid_in_mask(640, 480, 128, 128, mask, ds, 0.25)  # the grid within the tissue mask, no more
    assert len(coords) == int(row["n_tiles"]) == len(expected) > 0
    assert np.array_equal(coords, expected)


def test_png_tiles_and_unknown_files_are_listed_as_skipped(tmp_path, tissue_rgb, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(tissue_rgb).save(src / "crop.png")
    (src / "notes.txt").write_text("not a slide")
    out = src / "tiles"  # inside the input folder: never searched for slides
    assert main([str(src), "--out", str(out), *SMALL, "--slide-mpp", "0.5"]) == 0
    summary = _summary(out)
    assert summary["crop"]["status"] == "ok" and int(summary["crop"]["n_tiles"]) > 0
    assert read_coords(out / "crop.h5")[1]["patch_level"] == 0
    skipped = summary["notes.txt"]
    assert skipped["status"] == "skipped" and skipped["error"] == "unknown extension .txt"
    assert skipped["path"] == str(src / "notes.txt")
    err = capsys.readouterr().err
    assert "1 tiled, 0 already done, 1 skipped (not slides), 0 failed" in err
    assert "skipped " + str(src / "notes.txt") + ": unknown extension .txt" in err
    # a rerun skips the finished slide and still lists the text file; the outputs (PNGs, .h5, .csv) are not inputs
    assert main([str(src), "--out", str(out), *SMALL, "--slide-mpp", "0.5"]) == 0
    summary = _summary(out)
    assert summary["crop"]["status"] == "skipped" and summary["crop"]["error"] == ""
    assert set(summary) == {"crop", "notes.txt"}


def test_refused_files_say_what_they_are(tmp_path, tissue_rgb):
    src = tmp_path / "in"
    (src / "series").mkdir(parents=True)
    tifffile.imwrite(src / "grey16.tif", (np.arange(200 * 300) % 4096).astype(np.uint16).reshape(200, 300))
    _write_label_dicom(src / "series" / "only.dcm")
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, tissue_rgb, photometric="rgb")
    (src / "cut.tif").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out), *SMALL, "--slide-mpp", "0.5"]) == 1
    summary = _summary(out)
    assert {row["status"] for row in summary.values()} == {"failed"}
    grey = summary["grey16"]["error"]
    assert "16-bit greyscale TIFF 300x200: not a brightfield slide" in grey and "corrupt" not in grey
    assert "DICOM label image (ImageType LABEL)" in summary["only"]["error"]
    assert "tile the VOLUME instances" in summary["only"]["error"]
    assert "truncated TIFF" in summary["cut"]["error"]
    for row in summary.values():
        assert row["path"] in row["error"]  # every message names its file


@pytest.mark.realdata
def test_real_ihc_png_tiles_with_slide_mpp(realdata, tmp_path):
    png = realdata / "ihc.png"
    out = tmp_path / "out"
    assert main([str(png), "--out", str(out), "--workers", "1"]) == 1
    assert "plain RGB PNG 512x512" in _summary(out)["ihc"]["error"]
    assert main([str(png), "--out", str(out), "--workers", "1", "--slide-mpp", "0.5"]) == 0
    coords, attrs = read_coords(out / "ihc.h5")
    assert attrs["slide_mpp"] == 0.5 and attrs["patch_level"] == 0 and attrs["patch_size_level0"] == 256
    assert 1 <= len(coords) <= 4  # a 2x2 grid of 256-px tiles at most
