"""VinDr-Mammo -> medconv mammogram manifest: `medconv prepare vindr-mammo --root DIR --out DIR`.

Reads `breast-level_annotations.csv` (one row per image: study_id, series_id, image_id, laterality,
view_position, height, width, breast_birads, breast_density, split) and `finding_annotations.csv`
(one row per finding: image_id, finding_categories, finding_birads, xmin, ymin, xmax, ymax), with
images at `images/<study_id>/<image_id>.dicom`.

Label schemes:
  birads-ge-4 (default): breast-level BI-RADS 4 or 5 (suspicious) is positive, 1-3 negative.
  birads-ge-3: BI-RADS 3-5 positive.
  any-finding: any finding other than "No Finding" is positive.
Boxes of a positive image are its findings meeting the scheme (finding BI-RADS at or above the
threshold, or any finding), [x0, y0, x1, y1] in original pixels; VinDr has boxes, not masks, so
mask_path stays empty. VinDr gives no patient identifier: each study is one woman's exam, so
patient_id = exam_id = study_id. The split is the dataset's (training -> train, test -> test).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from pathlib import Path

import pandas as pd

from medconv.data_prep._common import MANIFEST_COLUMNS, missing_files_error, read_csv, relpath, write_manifest
from medconv.errors import InputFileError

BREAST_CSV = "breast-level_annotations.csv"
FINDING_CSV = "finding_annotations.csv"
BREAST_REQUIRED = ["study id", "image id", "laterality", "view position", "breast birads", "split"]
FINDING_REQUIRED = ["image id", "finding categories", "finding birads", "xmin", "ymin", "xmax", "ymax"]
SCHEMES = {"birads-ge-4": 4, "birads-ge-3": 3, "any-finding": None}
SPLITS = {"training": "train", "train": "train", "test": "test"}


def birads(value: str) -> int | None:
    """'BI-RADS 4' / '4' -> 4; empty -> None."""
    text = str(value).upper().replace("BI-RADS", "").strip()
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError as err:
        raise InputFileError(f"unexpected BI-RADS value {value!r} in the VinDr-Mammo annotations") from err


def _categories(value: str) -> list[str]:
    try:
        parsed = ast.literal_eval(value) if value.startswith("[") else [value]
    except (ValueError, SyntaxError):
        parsed = [value]
    return [str(c).strip() for c in parsed if str(c).strip()]


def _find_csv(root: Path, name: str) -> Path:
    hits = [root / name] if (root / name).is_file() else sorted(root.rglob(name))
    if not hits:
        raise InputFileError(f"{name} not found under {root}: point --root at the VinDr-Mammo folder (it holds {name})")
    return hits[0]


def build_manifest(root: Path, out: Path, label_scheme: str = "birads-ge-4", allow_missing: bool = False) -> Path:
    """Write `out/manifest.csv` for a VinDr-Mammo download at `root`; return its path."""
    if label_scheme not in SCHEMES:
        raise InputFileError(f"unknown label scheme {label_scheme!r}; choose from {', '.join(SCHEMES)}")
    if not root.is_dir():
        raise InputFileError(f"VinDr-Mammo root {root} is not a folder: pass the folder holding the CSVs and images/")
    threshold = SCHEMES[label_scheme]
    breast_csv = _find_csv(root, BREAST_CSV)
    breasts = read_csv(breast_csv, BREAST_REQUIRED)
    findings = read_csv(_find_csv(root, FINDING_CSV), FINDING_REQUIRED)
    images_dir = breast_csv.parent / "images"

    boxes_of: dict[str, list[list[float]]] = {}
    has_finding: set[str] = set()
    for row in findings.to_dict("records"):
        image_id, cats = row["image id"], _categories(row["finding categories"])
        if not cats or cats == ["No Finding"]:
            continue
        has_finding.add(image_id)
        level = birads(row["finding birads"])
        if threshold is not None and (level is None or level < threshold):
            continue
        try:
            box = [float(row[c]) for c in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:  # a finding without coordinates
            continue
        if all(math.isfinite(c) for c in box) and box[2] > box[0] and box[3] > box[1]:
            boxes_of.setdefault(image_id, []).append([round(c, 2) for c in box])

    rows, missing = [], []
    for row in breasts.to_dict("records"):
        study, image_id = row["study id"], row["image id"]
        path = images_dir / study / f"{image_id}.dicom"
        if not path.is_file():
            missing.append(str(path.relative_to(root)) if path.is_relative_to(root) else str(path))
            continue
        level = birads(row["breast birads"])
        if threshold is None:
            positive = image_id in has_finding
        else:
            if level is None:
                raise InputFileError(f"image {image_id} in {breast_csv} has no breast_birads")
            positive = level >= threshold
        split = SPLITS.get(row["split"].lower())
        if split is None:
            raise InputFileError(f"unexpected split {row['split']!r} for image {image_id} in {breast_csv}")
        rows.append(
            {
                "image_path": relpath(path, out),
                "label": "positive" if positive else "negative",
                "patient_id": study,
                "exam_id": study,
                "laterality": row["laterality"].upper(),
                "view": row["view position"].upper(),
                "mask_path": "",
                "boxes": json.dumps(boxes_of.get(image_id, []) if positive else []),
                "split": split,
                "breast_birads": "" if level is None else level,
                "breast_density": row.get("breast density", ""),
            }
        )
    if missing and not allow_missing:
        raise missing_files_error(
            "VinDr-Mammo image(s) listed in the annotations", missing, root,
            "Images are expected at images/<study_id>/<image_id>.dicom beside the CSVs; finish the download "
            "or pass --allow-missing to skip them.",
        )  # fmt: skip
    if missing:
        print(f"vindr-mammo: skipped {len(missing)} missing image(s), e.g. {missing[0]}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    columns = MANIFEST_COLUMNS + ["split", "breast_birads", "breast_density"]
    return write_manifest(pd.DataFrame(rows, columns=columns), out / "manifest.csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medconv prepare vindr-mammo", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="VinDr-Mammo folder (the CSVs and images/)")
    parser.add_argument("--out", type=Path, required=True, help="where manifest.csv is written")
    parser.add_argument("--label-scheme", choices=list(SCHEMES), default="birads-ge-4")
    parser.add_argument("--allow-missing", action="store_true", help="skip annotated images that are absent")
    args = parser.parse_args(argv)
    print(build_manifest(args.root, args.out, args.label_scheme, args.allow_missing))
    return 0
