"""`medconv prepare camelyon16`: the CAMELYON16 release layout -> a medconv slide manifest.

    ROOT/training/normal/normal_001.tif ...          label normal
    ROOT/training/tumor/tumor_001.tif ...            label tumor
    ROOT/training/lesion_annotations/tumor_001.xml   ASAP polygons (Tumor/_0/_1; _2 = exclusions)
    ROOT/testing/images/test_001.tif ...             labels from ROOT/testing/reference.csv
    ROOT/testing/lesion_annotations/test_001.xml     (optional)

One slide per patient in CAMELYON16, so patient_id is the slide name. Training slides are split into
train/val by patient (stratified, seeded); testing slides are the test split. Paths are written relative
to the manifest's folder, so the manifest and the data can move together.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import pandas as pd

from medconv.data_prep._common import relpath, write_manifest
from medconv.errors import InputFileError, MedconvError

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs")
COLUMNS = ("slide_path", "label", "patient_id", "split", "annotation_path")


def _slides(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file()) if folder.is_dir() else []


def read_reference(path: Path) -> dict[str, str]:
    """testing/reference.csv: `test_001,Tumor,Macro,...` or `test_002,Normal` rows (a header row is allowed)."""
    labels: dict[str, str] = {}
    for i, row in enumerate(csv.reader(path.read_text().splitlines())):
        if not row or not row[0].strip():
            continue
        name, label = row[0].strip(), (row[1].strip().lower() if len(row) > 1 else "")
        if label in ("tumor", "tumour"):
            labels[Path(name).stem] = "tumor"
        elif label == "normal":
            labels[Path(name).stem] = "normal"
        elif i > 0:
            raise InputFileError(f"{path}: row {i + 1} has label {row[1:2]}; expected Tumor or Normal.")
    return labels


def build_rows(root: Path, out_dir: Path, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[str]]:
    """Manifest rows and warnings (tumour slides without annotations: their tiles get the slide label)."""
    from medconv.data.splits import assign_splits

    root = Path(root)
    train = [(p, "normal") for p in _slides(root / "training" / "normal")]
    train += [(p, "tumor") for p in _slides(root / "training" / "tumor")]
    test_slides = _slides(root / "testing" / "images")
    if not train and not test_slides:
        raise InputFileError(
            f"{root}: no slides found; expected the CAMELYON16 layout training/normal/*.tif, training/tumor/*.tif, "
            "testing/images/*.tif (+ training/lesion_annotations/*.xml, testing/reference.csv)."
        )
    test = []
    if test_slides:
        reference = root / "testing" / "reference.csv"
        if not reference.is_file():
            raise InputFileError(f"{reference}: not found; it gives the test slides' labels (test_001,Tumor,...).")
        labels = read_reference(reference)
        missing = [p.stem for p in test_slides if p.stem not in labels]
        if missing:
            raise InputFileError(f"{reference}: no label for {len(missing)} test slide(s): {', '.join(missing[:10])}.")
        test = [(p, labels[p.stem]) for p in test_slides]
    splits = list(assign_splits([p.stem for p, _ in train], [int(y == "tumor") for _, y in train], val_fraction, 0.0, seed)) if train else []
    rows, warnings = [], []
    for (path, label), split in zip(train + test, splits + ["test"] * len(test), strict=True):
        folder = "training" if split != "test" else "testing"
        xml = root / folder / "lesion_annotations" / f"{path.stem}.xml"
        if label == "tumor" and not xml.is_file():
            warnings.append(f"{path.name}: tumour slide without {xml.relative_to(root)}; its tiles get the slide label")
        rows.append({
            "slide_path": relpath(path, out_dir), "label": label, "patient_id": path.stem, "split": split,
            "annotation_path": relpath(xml, out_dir) if xml.is_file() else "",
        })
    return rows, warnings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medconv prepare camelyon16", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("root", type=Path, help="CAMELYON16 folder holding training/ and testing/")
    p.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of training patients held out as val")
    p.add_argument("--seed", type=int, default=0)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        rows, warnings = build_rows(args.root, args.out.parent, args.val_fraction, args.seed)
    except MedconvError as err:
        print(f"medconv prepare camelyon16: error: {err}", file=sys.stderr)
        return 2
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), args.out)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    print(f"wrote {args.out}: {len(rows)} slides ({counts['train']} train, {counts['val']} val, {counts['test']} test); "
          f"next: medconv tile <slides> --out coords/ and set data.init_args.coords_dir")
    return 0


if __name__ == "__main__":
    sys.exit(main())
