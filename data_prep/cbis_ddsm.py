"""CBIS-DDSM -> medconv mammogram manifest: `medconv prepare cbis-ddsm --root DIR --out DIR`.

Reads the published description CSVs (mass/calc x train/test) and the DICOM tree as downloaded from
TCIA. The CSV paths (`<case>/<study UID>/<series UID>/000000.dcm`) do not match the downloaded
folders (`<case>/<date-DDSM-id>/<n.000000-full mammogram images-id>/1-1.dcm`), so each file is found
by its case folder (the first path component) and the DICOM(s) under it; for ROI masks, whose case
folder also holds the cropped lesion image, the full-size one (or the series described as ROI mask)
is taken.

One manifest row per mammogram (patient, breast, view); the Mass and Calc copies of one scan become
one row, positive when any of its abnormalities is positive under the label scheme:
  malignant-vs-rest (default): pathology MALIGNANT is positive; BENIGN and BENIGN_WITHOUT_CALLBACK are not.
  birads-ge-4: BI-RADS assessment 4 or 5 is positive.
Every CBIS-DDSM image contains a lesion, so "negative" means benign (or low BI-RADS), not normal.
ROI masks of the positive abnormalities are merged into one PNG per image (masks/), with one box per
abnormality. The split is the dataset's train/test; a patient found in both goes to test (so that
splits stay by patient) and is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medconv.data_prep._common import (
    MANIFEST_COLUMNS,
    mask_box,
    missing_files_error,
    read_csv,
    relpath,
    write_manifest,
    write_mask_png,
)
from medconv.errors import InputFileError

CSV_FILES = {
    "mass_case_description_train_set.csv": ("mass", "train"),
    "mass_case_description_test_set.csv": ("mass", "test"),
    "calc_case_description_train_set.csv": ("calcification", "train"),
    "calc_case_description_test_set.csv": ("calcification", "test"),
}
REQUIRED = [
    "patient id", "left or right breast", "image view", "abnormality id", "abnormality type",
    "pathology", "image file path", "roi mask file path",
]  # fmt: skip


def _malignant(row: pd.Series) -> bool:
    return row["pathology"].upper() == "MALIGNANT"


def _birads_ge_4(row: pd.Series) -> bool:
    try:
        return int(float(row["assessment"])) >= 4
    except ValueError as err:
        raise InputFileError(
            f"assessment {row['assessment']!r} of {row['image file path']} is not a BI-RADS number"
        ) from err


SCHEMES: dict[str, tuple[Callable[[pd.Series], bool], list[str]]] = {
    "malignant-vs-rest": (_malignant, []),
    "birads-ge-4": (_birads_ge_4, ["assessment"]),
}


def find_csvs(csv_dir: Path) -> dict[Path, tuple[str, str]]:
    """The description CSVs under `csv_dir` (searched recursively), with their lesion family and split."""
    found = {}
    for name, meta in CSV_FILES.items():
        hits = sorted(csv_dir.rglob(name))
        if hits:
            found[hits[0]] = meta
    if not found:
        raise InputFileError(
            f"no CBIS-DDSM description CSV found under {csv_dir}: expected one or more of {', '.join(CSV_FILES)}; "
            "download them from the TCIA CBIS-DDSM page or pass --csv-dir"
        )
    return found


class DicomFinder:
    """Finds a CSV-named DICOM in the downloaded tree, whose folder names differ from the CSV's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: dict[str, list[Path]] | None = None

    def _index(self) -> dict[str, list[Path]]:
        if self._dirs is None:
            self._dirs = defaultdict(list)
            for parent, names, _ in os.walk(self.root):
                for name in names:
                    self._dirs[name].append(Path(parent) / name)
        return self._dirs

    def candidates(self, csv_path: str) -> list[Path]:
        rel = csv_path.strip().replace("\\", "/").strip("/")
        direct = self.root / rel
        if rel and direct.is_file():
            return [direct]
        case = rel.split("/")[0]
        return sorted(p for folder in self._index().get(case, []) for p in folder.rglob("*.dcm"))

    def image(self, csv_path: str) -> Path | None:
        found = self.candidates(csv_path)
        return found[0] if found else None

    def roi_mask(self, csv_path: str) -> Path | None:
        """The ROI mask among the case folder's DICOMs: described as such, else the largest image."""
        import pydicom

        found = self.candidates(csv_path)
        if len(found) <= 1:
            return found[0] if found else None
        best, best_key = None, None
        for path in found:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            described = "roi mask" in str(ds.get("SeriesDescription", "")).lower()
            key = (described, int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)))
            if best_key is None or key > best_key:
                best, best_key = path, key
        return best


def build_manifest(
    root: Path, out: Path, csv_dir: Path | None = None, label_scheme: str = "malignant-vs-rest",
    masks: bool = True, allow_missing: bool = False,
) -> Path:  # fmt: skip
    """Write `out/manifest.csv` (and masks/) for a CBIS-DDSM download at `root`; return its path."""
    if label_scheme not in SCHEMES:
        raise InputFileError(f"unknown label scheme {label_scheme!r}; choose from {', '.join(SCHEMES)}")
    if not root.is_dir():
        raise InputFileError(f"CBIS-DDSM root {root} is not a folder: pass the folder holding the DICOM tree")
    positive_of, extra = SCHEMES[label_scheme]
    frames = []
    for path, (family, split) in find_csvs(csv_dir or root).items():
        frame = read_csv(path, REQUIRED + extra)
        frames.append(frame.assign(family=family, split=split))
    table = pd.concat(frames, ignore_index=True)
    table["positive"] = table.apply(positive_of, axis=1)
    lat_map = {"LEFT": "L", "RIGHT": "R"}
    bad = sorted(set(table["left or right breast"].str.upper()) - set(lat_map))
    if bad:
        raise InputFileError(f"unexpected 'left or right breast' value(s) {bad} in the CBIS-DDSM CSVs")
    table["laterality"] = table["left or right breast"].str.upper().map(lat_map)
    table["view"] = table["image view"].str.upper()

    finder = DicomFinder(root)
    out.mkdir(parents=True, exist_ok=True)
    rows, missing = [], []
    for (patient, lat, view), group in table.groupby(["patient id", "laterality", "view"], sort=True):
        image = None
        for csv_path in group["image file path"].unique():
            image = image or finder.image(csv_path)
        if image is None:
            missing.append(group["image file path"].iloc[0])
            continue
        positive = bool(group["positive"].any())
        mask_rel, boxes = "", []
        if positive and masks:
            mask_rel, boxes = _merge_roi_masks(finder, group[group["positive"]], image, out, missing)
        rows.append(
            {
                "image_path": relpath(image, out),
                "label": "positive" if positive else "negative",
                "patient_id": patient,
                "exam_id": patient,  # CBIS-DDSM has one exam per patient
                "laterality": lat,
                "view": view,
                "mask_path": mask_rel,
                "boxes": json.dumps(boxes),
                "split": "test" if (group["split"] == "test").any() else "train",
                "abnormality_type": ";".join(sorted(group["family"].unique())),
                "pathology": ";".join(sorted(group["pathology"].str.upper().unique())),
            }
        )
    if missing and not allow_missing:
        raise missing_files_error(
            "CBIS-DDSM DICOM file(s) named in the CSVs", missing, root,
            "Point --root at the folder holding the case folders (e.g. Mass-Training_P_00001_LEFT_CC), "
            "finish the download, or pass --allow-missing to skip them.",
        )  # fmt: skip
    if missing:
        print(f"cbis-ddsm: skipped {len(missing)} missing file(s), e.g. {missing[0]}", file=sys.stderr)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS + ["split", "abnormality_type", "pathology"])
    _one_split_per_patient(manifest)
    return write_manifest(manifest, out / "manifest.csv")


def _merge_roi_masks(
    finder: DicomFinder, lesions: pd.DataFrame, image: Path, out: Path, missing: list[str]
) -> tuple[str, list[list[int]]]:
    import pydicom

    header = pydicom.dcmread(image, stop_before_pixels=True, force=True)
    shape = (int(header.Rows), int(header.Columns))
    merged, boxes = np.zeros(shape, bool), []
    for csv_path in lesions["roi mask file path"]:
        roi_path = finder.roi_mask(csv_path)
        if roi_path is None:
            missing.append(csv_path)
            continue
        try:
            roi = pydicom.dcmread(roi_path).pixel_array > 0
        except Exception as err:
            raise InputFileError(f"cannot read the ROI mask {roi_path} ({err}); re-download it") from err
        if roi.shape != shape:  # a few CBIS masks are off by some pixels: fit them to the image
            roi = cv2.resize(roi.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        box = mask_box(roi)
        if box is not None:
            boxes.append(box)
            merged |= roi
    if not boxes:
        return "", []
    mask_path = out / "masks" / f"{_case_name(image)}_mask.png"
    write_mask_png(merged, mask_path)
    return relpath(mask_path, out), boxes


def _case_name(image: Path) -> str:
    """The case folder (e.g. Mass-Training_P_00001_LEFT_CC): the ancestor whose name has `_P_`."""
    for parent in image.parents:
        if "_P_" in parent.name:
            return parent.name
    return image.stem


def _one_split_per_patient(manifest: pd.DataFrame) -> None:
    both = manifest.groupby("patient_id")["split"].nunique()
    both = list(both[both > 1].index)
    if both:
        manifest.loc[manifest["patient_id"].isin(both), "split"] = "test"
        note = f"cbis-ddsm: {len(both)} patient(s) in both train and test moved to test, e.g. {both[0]}"
        print(note, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medconv prepare cbis-ddsm", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the downloaded CBIS-DDSM folder (DICOM tree)")
    parser.add_argument("--out", type=Path, required=True, help="where manifest.csv and masks/ are written")
    parser.add_argument("--csv-dir", type=Path, help="folder holding the description CSVs (default: --root)")
    parser.add_argument("--label-scheme", choices=sorted(SCHEMES), default="malignant-vs-rest")
    parser.add_argument("--no-masks", action="store_true", help="skip reading ROI masks (no mask_path, no boxes)")
    parser.add_argument("--allow-missing", action="store_true", help="skip CSV rows whose DICOM is absent")
    args = parser.parse_args(argv)
    manifest = build_manifest(
        args.root, args.out, args.csv_dir, args.label_scheme, masks=not args.no_masks, allow_missing=args.allow_missing
    )
    print(manifest)
    return 0
