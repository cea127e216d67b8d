"""VinDr-Mammo adapter on a fake tree with the published CSV columns and images/<study>/<image>.dicom."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medconv.data_prep import vindr_mammo
from medconv.errors import InputFileError
from medconv.io.mammo import read_mammogram

BREAST_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                  "breast_birads", "breast_density", "split"]  # fmt: skip
MANIFEST_COLUMNS = ["image_path", "label", "patient_id", "exam_id", "laterality", "view", "mask_path", "boxes"]
FINDING_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                   "breast_birads", "breast_density", "finding_categories", "finding_birads",
                   "xmin", "ymin", "xmax", "ymax", "split"]  # fmt: skip


def dicom(path: Path, lat: str, view: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.ImageLaterality, ds.ViewPosition, ds.ImagerPixelSpacing = lat, view, [0.085, 0.085]
    ds.Rows, ds.Columns = 20, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 14, 13, 0
    ds.PixelData = np.zeros((20, 16), "<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# (study, image, laterality, view, breast BI-RADS, split, findings [(categories, BI-RADS, box)])
IMAGES = [
    ("s1", "a_lcc", "L", "CC", "BI-RADS 4", "training", [("['Mass']", "BI-RADS 4", (10, 20, 50.5, 60))]),
    ("s1", "a_lmlo", "L", "MLO", "BI-RADS 4", "training",
     [("['Mass', 'Architectural Distortion']", "BI-RADS 4", (12, 18, 40, 44)),
      ("['Asymmetry']", "BI-RADS 3", (1, 1, 5, 5))]),
    ("s1", "a_rcc", "R", "CC", "BI-RADS 1", "training", [("['No Finding']", "", None)]),
    ("s1", "a_rmlo", "R", "MLO", "BI-RADS 1", "training", [("['No Finding']", "", None)]),
    ("s2", "b_lcc", "L", "CC", "BI-RADS 2", "test", [("['Suspicious Calcification']", "BI-RADS 3", (3, 4, 9, 9))]),
    ("s2", "b_lmlo", "L", "MLO", "BI-RADS 2", "test", [("['No Finding']", "", None)]),
    ("s2", "b_rcc", "R", "CC", "BI-RADS 2", "test", [("['No Finding']", "", None)]),
    ("s2", "b_rmlo", "R", "MLO", "BI-RADS 2", "test", [("['No Finding']", "", None)]),
]  # fmt: skip


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "vindr"
    breasts, findings = [], []
    for study, image, lat, view, birads, split, finds in IMAGES:
        common = {"study_id": study, "series_id": f"{study}_{lat}", "image_id": image, "laterality": lat,
                  "view_position": view, "height": 20, "width": 16, "breast_birads": birads,
                  "breast_density": "DENSITY C", "split": split}  # fmt: skip
        breasts.append(common)
        for cats, f_birads, box in finds:
            coords = dict(zip(["xmin", "ymin", "xmax", "ymax"], box or [""] * 4, strict=True))
            findings.append({**common, "finding_categories": cats, "finding_birads": f_birads, **coords})
        dicom(root / "images" / study / f"{image}.dicom", lat, view)
    pd.DataFrame(breasts, columns=BREAST_COLUMNS).to_csv(root / "breast-level_annotations.csv", index=False)
    pd.DataFrame(findings, columns=FINDING_COLUMNS).to_csv(root / "finding_annotations.csv", index=False)
    return root


def test_birads_ge_4_labels_boxes_and_splits(tree: Path, tmp_path: Path) -> None:
    manifest = vindr_mammo.build_manifest(tree, tmp_path / "out")
    frame = pd.read_csv(manifest, keep_default_na=False).set_index("image_path", drop=False)
    assert list(frame.columns[:8]) == MANIFEST_COLUMNS
    assert len(frame) == 8
    positive = frame[frame.label == "positive"]
    assert sorted(Path(p).stem for p in positive.image_path) == ["a_lcc", "a_lmlo"]
    boxes = {Path(p).stem: json.loads(b) for p, b in zip(positive.image_path, positive.boxes, strict=True)}
    # The BI-RADS 3 asymmetry of a_lmlo does not meet the scheme: its box is left out.
    assert boxes == {"a_lcc": [[10.0, 20.0, 50.5, 60.0]], "a_lmlo": [[12.0, 18.0, 40.0, 44.0]]}
    assert (frame[frame.label == "negative"].boxes == "[]").all()
    assert set(frame[frame.patient_id == "s2"].split) == {"test"}
    assert set(frame[frame.patient_id == "s1"].split) == {"train"}
    assert (frame.patient_id == frame.exam_id).all() and (frame.mask_path == "").all()
    row = frame.iloc[0]
    m = read_mammogram(manifest.parent / row.image_path)
    assert (m.laterality, m.view) == (row.laterality, row.view) and m.pixel_spacing_mm == (0.085, 0.085)


def test_any_finding_scheme(tree: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(vindr_mammo.build_manifest(tree, tmp_path / "o", "any-finding"), keep_default_na=False)
    positive = frame[frame.label == "positive"]
    assert sorted(Path(p).stem for p in positive.image_path) == ["a_lcc", "a_lmlo", "b_lcc"]
    lmlo = positive[positive.image_path.str.contains("a_lmlo")].iloc[0]
    assert len(json.loads(lmlo.boxes)) == 2


def test_missing_image_is_listed_or_skipped(tree: Path, tmp_path: Path) -> None:
    (tree / "images" / "s2" / "b_rcc.dicom").unlink()
    with pytest.raises(InputFileError, match="b_rcc.dicom"):
        vindr_mammo.build_manifest(tree, tmp_path / "o")
    assert len(pd.read_csv(vindr_mammo.build_manifest(tree, tmp_path / "o", allow_missing=True))) == 7


def test_missing_csv_or_column_is_a_clear_error(tree: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(tree / "finding_annotations.csv").drop(columns=["xmin"])
    frame.to_csv(tree / "finding_annotations.csv", index=False)
    with pytest.raises(InputFileError, match="finding_annotations.csv lacks the column.*xmin"):
        vindr_mammo.build_manifest(tree, tmp_path / "o")
    (tree / "breast-level_annotations.csv").unlink()
    with pytest.raises(InputFileError, match="breast-level_annotations.csv not found"):
        vindr_mammo.build_manifest(tree, tmp_path / "o")


def test_cli(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vindr_mammo.main(["--root", str(tree), "--out", str(tmp_path / "o"), "--label-scheme", "birads-ge-3"]) == 0
    frame = pd.read_csv(Path(capsys.readouterr().out.strip()), keep_default_na=False)
    assert sorted(Path(p).stem for p in frame[frame.label == "positive"].image_path) == ["a_lcc", "a_lmlo"]
