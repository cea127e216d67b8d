"""INPUT expansion: files, folders, globs, DICOM series, clashing output names, files that are not slides."""

from __future__ import annotations

import numpy as np
import pytest

from medconv.errors import InputFileError
from medconv.tiling.inputs import find_inputs, find_slides, slide_name


def test_slide_name():
    from pathlib import Path

    assert slide_name(Path("a/b/S1.svs")) == "S1"
    assert slide_name(Path("x.ome.tiff")) == "x"
    assert slide_name(Path("dotted.name.ndpi")) == "dotted.name"


def test_folders_globs_and_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "s1.svs").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not a slide")
    (tmp_path / "a" / ".hidden.svs").write_bytes(b"x")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "s2.ndpi").write_bytes(b"x")
    (tmp_path / "odd.bin").write_bytes(b"x")
    got = find_slides([str(tmp_path / "a"), str(tmp_path / "b" / "*.ndpi"), str(tmp_path / "odd.bin")])
    assert [name for name, _ in got] == ["odd", "s1", "s2"]


def test_folder_files_that_are_not_slides_are_reported(tmp_path):
    """Files a folder search does not take come back with a reason (the summary lists them), never silently."""
    from medconv.io.png import write_mask_png

    (tmp_path / "notes.txt").write_text("not a slide")
    (tmp_path / "scan.PNG").write_bytes(b"x")  # plain images are slides now, whatever the case of the suffix
    (tmp_path / "photo.jpeg").write_bytes(b"x")
    (tmp_path / "strips.tif").write_bytes(b"x")
    (tmp_path / "README").write_text("no extension")
    (tmp_path / ".demo.12345.tmp.h5").write_bytes(b"x")  # our temp files and hidden files are left out
    write_mask_png(tmp_path / "old_mask.png", np.ones((4, 4), bool), 16.0)  # a medconv output, not a slide
    (tmp_path / "case.mrxs").write_bytes(b"x")
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "Data0000.dat").write_bytes(b"x")  # MRXS data files belong to their slide
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "prev_qc.png").write_bytes(b"x")  # the output folder is never searched
    slides, skipped = find_inputs([str(tmp_path)], exclude=[tmp_path / "out"])
    assert [name for name, _ in slides] == ["case", "photo", "scan", "strips"]
    reasons = {p.name: why for p, why in skipped}
    assert reasons == {
        "notes.txt": "unknown extension .txt",
        "README": "no extension",
        "old_mask.png": "a medconv mask or QC image, not a slide",
    }
    with pytest.raises(InputFileError, match="notes.txt: unknown extension .txt"):  # only non-slides: say what they were
        (tmp_path / "only").mkdir()
        (tmp_path / "only" / "notes.txt").write_text("x")
        find_inputs([str(tmp_path / "only")])


def test_clashing_names_and_missing_inputs(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.svs").write_bytes(b"x")
    with pytest.raises(InputFileError, match="same"):
        find_slides([str(tmp_path / "x"), str(tmp_path / "y")])
    with pytest.raises(InputFileError, match="no such file"):
        find_slides([str(tmp_path / "nope.svs")])
    with pytest.raises(InputFileError, match="matches no file"):
        find_slides([str(tmp_path / "*.mrxs")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no slide files"):
        find_slides([str(tmp_path / "empty")])


@pytest.mark.realdata
def test_realdata_folder(realdata):
    slides, skipped = find_inputs([str(realdata)])
    assert [name for name, _ in slides] == [
        "almost-white-1", "cmu-1-small-region", "ihc", "multiframe_camelyon_challenge_image", "no-tissue",
        "tissue-level0-4302-10273-4814-10785",
    ]
    assert [(p.name, why) for p, why in skipped] == [("README.md", "unknown extension .md")]


def test_dicom_levels_of_one_series_are_one_slide(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = tmp_path / "case7"
    folder.mkdir()
    for i, uid in enumerate(("1.2.3", "1.2.3")):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL WSI
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = f"1.2.3.{i + 1}"
        ds.SeriesInstanceUID = uid
        ds.save_as(folder / f"level{i}.dcm", enforce_file_format=True)
    got = find_slides([str(folder)])
    assert got == [("case7", folder / "level0.dcm")]
