"""CBIS-DDSM adapter on a fake tree laid out like the TCIA download, with the published CSV columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medconv.data_prep import cbis_ddsm
from medconv.errors import InputFileError
from medconv.io.mammo import read_mammogram

H, W = 40, 30
MASS_COLUMNS = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "mass shape", "mass margins", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
]  # fmt: skip
CALC_COLUMNS = [
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "calc type", "calc distribution", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
]  # fmt: skip
UID = "1.3.6.1.4.1.9590.100.1.2"
MANIFEST_COLUMNS = ["image_path", "label", "patient_id", "exam_id", "laterality", "view", "mask_path", "boxes"]


def dicom(path: Path, pixels: np.ndarray, description: str = "") -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesDescription = description
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.asarray(pixels, "<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def case(root: Path, name: str, roi_boxes: dict[int, tuple[int, int, int, int]]) -> dict[str, str]:
    """Full image + one ROI folder per abnormality, named like the download; returns CSV-style paths."""
    base = root / "CBIS-DDSM"
    full = base / name / "07-20-2016-DDSM-74994" / "1.000000-full mammogram images-24515" / "1-1.dcm"
    dicom(full, np.full((H, W), 30000))
    paths = {"image": f"{name}/{UID}.4221/{UID}.3423/000000.dcm"}
    for abn, (x0, y0, x1, y1) in roi_boxes.items():
        mask = np.zeros((H, W))
        mask[y0:y1, x0:x1] = 255
        folder = base / f"{name}_{abn}" / "08-29-2017-DDSM-96009" / "1.000000-ROI mask images-3338"
        dicom(folder / "1-1.dcm", np.full((8, 6), 1000), "cropped images")  # the crop shares the folder
        dicom(folder / "1-2.dcm", mask, "ROI mask images")
        paths[abn] = f"{name}_{abn}/{UID}.1/{UID}.2/000001.dcm\n"  # the published CSVs carry a newline
    return paths


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def abnormality(patient, side, view, abn, pathology, paths, assessment=4, kind="mass"):
    return {
        "patient_id": patient, "left or right breast": side, "image view": view, "abnormality id": abn,
        "abnormality type": kind, "assessment": assessment, "pathology": pathology,
        "image file path": paths["image"], "cropped image file path": paths.get(abn, ""),
        "ROI mask file path": paths.get(abn, ""),
    }  # fmt: skip


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cbis"
    p1 = case(root, "Mass-Training_P_00001_LEFT_CC", {1: (5, 10, 12, 20), 2: (20, 30, 25, 35)})
    p2 = case(root, "Mass-Training_P_00002_RIGHT_MLO", {1: (3, 3, 9, 9)})
    p4 = case(root, "Mass-Training_P_00004_LEFT_MLO", {1: (3, 3, 9, 9)})
    write_csv(root / "mass_case_description_train_set.csv", MASS_COLUMNS, [
        abnormality("P_00001", "LEFT", "CC", 1, "MALIGNANT", p1, 5),
        abnormality("P_00001", "LEFT", "CC", 2, "BENIGN", p1, 3),
        abnormality("P_00002", "RIGHT", "MLO", 1, "BENIGN_WITHOUT_CALLBACK", p2, 2),
        abnormality("P_00004", "LEFT", "MLO", 1, "BENIGN", p4, 4),
    ])  # fmt: skip
    p3 = case(root, "Calc-Test_P_00003_LEFT_MLO", {1: (1, 1, 4, 4)})
    p4c = case(root, "Calc-Test_P_00004_RIGHT_CC", {1: (2, 2, 6, 6)})
    write_csv(root / "calc_case_description_test_set.csv", CALC_COLUMNS, [
        abnormality("P_00003", "LEFT", "MLO", 1, "MALIGNANT", p3, 5, "calcification"),
        abnormality("P_00004", "RIGHT", "CC", 1, "BENIGN", p4c, 2, "calcification"),
    ])  # fmt: skip
    return root


def test_manifest_rows_labels_and_masks(tree: Path, tmp_path: Path) -> None:
    manifest = cbis_ddsm.build_manifest(tree, tmp_path / "out")
    frame = pd.read_csv(manifest, keep_default_na=False).set_index("patient_id", drop=False)
    assert list(frame.columns[:8]) == MANIFEST_COLUMNS
    assert len(frame) == 5
    p1 = frame[frame.patient_id == "P_00001"].iloc[0]
    assert (p1.label, p1.laterality, p1.view, p1.split) == ("positive", "L", "CC", "train")
    assert json.loads(p1.boxes) == [[5, 10, 12, 20]]  # only the malignant abnormality
    mask = cv2.imread(str(manifest.parent / p1.mask_path), cv2.IMREAD_GRAYSCALE) > 0
    assert mask.shape == (H, W) and mask.sum() == 7 * 10 and mask[10:20, 5:12].all()
    assert read_mammogram(manifest.parent / p1.image_path).pixels.shape == (H, W)
    p2 = frame[frame.patient_id == "P_00002"].iloc[0]
    assert (p2.label, p2.mask_path, p2.boxes) == ("negative", "", "[]")
    p3 = frame[frame.patient_id == "P_00003"].iloc[0]
    assert (p3.label, p3.split, p3.abnormality_type) == ("positive", "test", "calcification")
    # P_00004 has a train (mass) and a test (calc) image: both go to test so splits stay by patient.
    assert set(frame[frame.patient_id == "P_00004"].split) == {"test"}


def test_birads_scheme(tree: Path, tmp_path: Path) -> None:
    manifest = cbis_ddsm.build_manifest(tree, tmp_path / "o", label_scheme="birads-ge-4")
    frame = pd.read_csv(manifest, keep_default_na=False)
    labels = dict(zip(frame.patient_id + frame.laterality, frame.label, strict=True))
    assert labels == {
        "P_00001L": "positive", "P_00002R": "negative", "P_00003L": "positive",
        "P_00004L": "positive", "P_00004R": "negative",
    }  # fmt: skip


def test_missing_dicom_is_listed_or_skipped(tree: Path, tmp_path: Path) -> None:
    for path in (tree / "CBIS-DDSM" / "Mass-Training_P_00002_RIGHT_MLO").rglob("*.dcm"):
        path.unlink()
    with pytest.raises(InputFileError, match="Mass-Training_P_00002_RIGHT_MLO"):
        cbis_ddsm.build_manifest(tree, tmp_path / "o")
    frame = pd.read_csv(cbis_ddsm.build_manifest(tree, tmp_path / "o", allow_missing=True))
    assert "P_00002" not in set(frame.patient_id) and len(frame) == 4


def test_no_csv_or_missing_column_is_a_clear_error(tmp_path: Path, tree: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="mass_case_description_train_set.csv"):
        cbis_ddsm.build_manifest(tmp_path / "empty", tmp_path / "o")
    frame = pd.read_csv(tree / "calc_case_description_test_set.csv").drop(columns=["pathology"])
    frame.to_csv(tree / "calc_case_description_test_set.csv", index=False)
    with pytest.raises(InputFileError, match="calc_case_description_test_set.csv lacks the column.*pathology"):
        cbis_ddsm.build_manifest(tree, tmp_path / "o")


def test_cli(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cbis_ddsm.main(["--root", str(tree), "--out", str(tmp_path / "o"), "--no-masks"]) == 0
    manifest = Path(capsys.readouterr().out.strip())
    frame = pd.read_csv(manifest, keep_default_na=False)
    assert (frame.mask_path == "").all() and len(frame) == 5
