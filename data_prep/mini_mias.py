"""mini-MIAS -> medconv mammogram manifest: `medconv prepare mini-mias ROOT --out manifest.csv [--target ...]`.

The mini-MIAS database: 322 digitised screen-film MLO mammograms of 161 women, 1024x1024 8-bit binary PGM
(P5) at 200 um per pixel, listed in `Info.txt` one finding per row:

    mdb001 G CIRC B 535 425 197      reference, background tissue (F/G/D), class, severity (B/M), x, y, radius
    mdb003 D NORM                    a normal image: no severity, no coordinates
    mdb216 D CALC M *NOTE 3*         distributed calcifications: no coordinates (the file's note 4)

Rows: one per image; an image with several findings (mdb005 has two) is positive when any finding is, and
keeps the box of every finding that meets the target. Findings without coordinates label their image but give
no box (they are counted in the printout); identical repeated rows are dropped with a note.

Targets: `abnormal` (default; any finding other than NORM is positive) or `malignant` (severity M positive;
benign and normal images negative, and only malignant findings give boxes, as in the CBIS-DDSM adapter).

Geometry: the file's note 3 puts the coordinate origin at the bottom-left corner, so image row = height - 1 - y
(y counts pixel rows up from the bottom row, 0-based). On the real images a disc of the given radius at that row
is brighter than the ring around it for 112 of the 119 located findings, against 78 with y taken as a row.
Boxes are [x0, y0, x1, y1] in image pixels (x1, y1 exclusive) around the finding's circle, clipped to the image.

Pairs: mdbNNN and its neighbour are one woman (001+002, 003+004, ...): patient_id = exam_id = mias<pair>.
Laterality follows the file's note 1, even numbers left and odd right, which the images bear out: with the
usual storage convention (a left breast's chest wall at the image's left edge) the breast lies in the left half
of 160 of the 161 even-numbered images and the right half of 160 of the odd ones; the remaining pair (mdb151,
mdb152, large breasts filling the width) shows its pectoral muscle on the expected side. View: MLO for all.
PGM carries no pixel spacing, so the manifest gives `pixel_spacing_mm` = 0.2 (what patch datamodules need).
Extra columns: pixel_spacing_mm, density (F/G/D), abnormality (classes, ';'-joined; NORM), severity (B/M).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medconv.data_prep._common import MANIFEST_COLUMNS, missing_files_error, relpath, write_manifest
from medconv.errors import InputFileError

INFO = "Info.txt"
TISSUES = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
CLASSES = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM")
SEVERITIES = ("B", "M")
TARGETS = ("abnormal", "malignant")
PIXEL_SPACING_MM = 0.2
EXTRA_COLUMNS = ["pixel_spacing_mm", "density", "abnormality", "severity"]
_REF = re.compile(r"^mdb(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    """One Info.txt row; `x, y, radius` are None when the row gives no location."""

    ref: str
    tissue: str
    kind: str
    severity: str
    x: int | None = None
    y: int | None = None
    radius: int | None = None
    line: int = 0

    def positive(self, target: str) -> bool:
        return self.kind != "NORM" if target == "abnormal" else self.severity == "M"

    def box(self, height: int, width: int) -> list[int] | None:
        """[x0, y0, x1, y1] around the circle, y flipped from the bottom-left origin; None without a location."""
        if self.x is None or self.y is None or self.radius is None:
            return None
        row = height - 1 - self.y
        box = [max(0, self.x - self.radius), max(0, row - self.radius),
               min(width, self.x + self.radius + 1), min(height, row + self.radius + 1)]
        return box if box[2] > box[0] and box[3] > box[1] else None


def parse_info(path: Path) -> tuple[list[Finding], list[str]]:
    """Findings of Info.txt (identical repeats dropped) and notes on what was unusual in it."""
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise InputFileError(f"cannot read {path}: {err}") from err
    findings: list[Finding] = []
    seen: set[tuple] = set()
    notes: list[str] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens or not _REF.match(tokens[0]):
            continue  # header, notes and rulers
        try:
            finding = _finding(tokens, number)
        except ValueError as err:
            problems.append(f"line {number}: {err} in {line.strip()!r}")
            continue
        key = (finding.ref, finding.tissue, finding.kind, finding.severity, finding.x, finding.y, finding.radius)
        if key in seen:
            notes.append(f"line {number}: repeats an earlier row of {finding.ref}; dropped")
            continue
        seen.add(key)
        extra = tokens[7:] if finding.x is not None else tokens[4 if finding.severity else 3 :]
        if extra:  # e.g. '*NOTE 3*' where distributed calcifications have no centre
            notes.append(f"line {number}: {finding.ref}: ignored {' '.join(extra)!r}")
        findings.append(finding)
    if problems:
        raise InputFileError(f"{path}: {len(problems)} row(s) not in the mini-MIAS format:\n  " + "\n  ".join(problems[:10]))
    if not findings:
        raise InputFileError(f"{path}: no rows like 'mdb001 G CIRC B 535 425 197'; is it the mini-MIAS Info.txt?")
    return findings, notes


def _finding(tokens: list[str], line: int) -> Finding:
    ref = tokens[0].lower()
    if len(tokens) < 3:
        raise ValueError("expected at least reference, tissue and class")
    tissue, kind = tokens[1].upper(), tokens[2].upper()
    if tissue not in TISSUES:
        raise ValueError(f"background tissue {tokens[1]!r} is not one of {'/'.join(TISSUES)}")
    if kind not in CLASSES:
        raise ValueError(f"class {tokens[2]!r} is not one of {', '.join(CLASSES)}")
    severity = tokens[3].upper() if len(tokens) > 3 and tokens[3].upper() in SEVERITIES else ""
    if kind == "NORM":
        return Finding(ref, tissue, kind, "", line=line)
    if not severity:
        raise ValueError(f"a {kind} finding needs its severity (B or M)")
    coords = tokens[4:7]
    if len(coords) == 3 and all(re.fullmatch(r"\d+(\.0*)?", c) for c in coords):
        x, y, radius = (int(float(c)) for c in coords)
        return Finding(ref, tissue, kind, severity, x, y, radius, line)
    return Finding(ref, tissue, kind, severity, line=line)


def find_info(root: Path) -> Path:
    hits = [root / INFO] if (root / INFO).is_file() else sorted(p for p in root.rglob("*") if p.name.lower() == INFO.lower())
    if not hits:
        raise InputFileError(f"{INFO} not found under {root}: point ROOT at the mini-MIAS folder (Info.txt and mdb*.pgm)")
    return hits[0]


def build_manifest(root: Path, out: Path, target: str = "abnormal", allow_missing: bool = False) -> tuple[Path, dict]:
    """Write the manifest (`out` itself when it ends in .csv, else `out/manifest.csv`); return it and its counts."""
    from medconv.io.mammo import read_mammogram

    if target not in TARGETS:
        raise InputFileError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if not root.is_dir():
        raise InputFileError(f"mini-MIAS root {root} is not a folder: pass the folder holding Info.txt and the mdb*.pgm files")
    manifest = out if out.suffix.lower() == ".csv" else out / "manifest.csv"
    info = find_info(root)
    findings, notes = parse_info(info)
    by_ref: dict[str, list[Finding]] = {}
    for f in findings:
        by_ref.setdefault(f.ref, []).append(f)
    files = {p.stem.lower(): p for p in sorted(root.rglob("*")) if p.suffix.lower() == ".pgm"}
    rows, missing, counts = [], [], {"unlocated": [], "several": 0}
    for ref in sorted(by_ref, key=lambda r: int(_REF.match(r).group(1))):
        group = _one_image(by_ref[ref], notes)
        path = files.get(ref)
        if path is None:
            missing.append(f"{ref}.pgm")
            continue
        height, width = read_mammogram(path).pixels.shape  # also proves medconv reads the file
        positive = [f for f in group if f.positive(target)]
        boxes = [b for b in (f.box(height, width) for f in positive) if b is not None]
        counts["unlocated"] += [f"{f.ref} {f.kind} {f.severity}" for f in group if f.kind != "NORM" and f.x is None]
        counts["several"] += len(group) > 1
        number = int(_REF.match(ref).group(1))
        patient = f"mias{(number + 1) // 2:03d}"
        rows.append({
            "image_path": relpath(path, manifest.parent), "label": "positive" if positive else "negative",
            "patient_id": patient, "exam_id": patient, "laterality": "L" if number % 2 == 0 else "R", "view": "MLO",
            "mask_path": "", "boxes": json.dumps(boxes), "pixel_spacing_mm": PIXEL_SPACING_MM, "density": group[0].tissue,
            "abnormality": ";".join(dict.fromkeys(f.kind for f in group)),
            "severity": ";".join(sorted({f.severity for f in group if f.severity})),
        })  # fmt: skip
    if missing and not allow_missing:
        raise missing_files_error("mini-MIAS image(s) listed in Info.txt", missing, root,
                                  "Put the mdb*.pgm files under ROOT (beside Info.txt), or pass --allow-missing to skip them.")
    for note in notes:
        print(f"mini-mias: {info.name} {note}", file=sys.stderr)
    if missing:
        print(f"mini-mias: skipped {len(missing)} missing image(s), e.g. {missing[0]}", file=sys.stderr)
    table = pd.DataFrame(rows, columns=MANIFEST_COLUMNS + EXTRA_COLUMNS)
    write_manifest(table, manifest)
    counts |= {"images": len(table), "patients": table["patient_id"].nunique(), "findings": len(findings),
               "positive": int((table["label"] == "positive").sum()), "negative": int((table["label"] == "negative").sum()),
               "boxes": int(table["boxes"].map(lambda b: len(json.loads(b))).sum()),
               "density": table["density"].value_counts().reindex(list(TISSUES), fill_value=0).to_dict()}
    return manifest, counts


def _one_image(group: list[Finding], notes: list[str]) -> list[Finding]:
    """An image's findings; a NORM row beside real findings is dropped, a disagreeing tissue noted."""
    if len({f.tissue for f in group}) > 1:
        notes.append(f"{group[0].ref}: rows disagree on background tissue {sorted({f.tissue for f in group})}; "
                     f"the first ({group[0].tissue}) is used")
    abnormal = [f for f in group if f.kind != "NORM"]
    if abnormal and len(abnormal) < len(group):
        notes.append(f"{group[0].ref}: listed both as NORM and with findings; the NORM row is ignored")
    return abnormal or group[:1]


def summary(manifest: Path, target: str, counts: dict) -> str:
    """What the adapter did, in the few lines a user checks against the dataset's documentation."""
    unlocated = counts["unlocated"]
    density = ", ".join(f"{k} {v}" for k, v in counts["density"].items())
    lines = [
        f"wrote {manifest}: {counts['images']} images of {counts['patients']} patients "
        f"(target {target}: {counts['positive']} positive, {counts['negative']} negative)",
        f"  {counts['findings']} findings; {counts['several']} images with several; {counts['boxes']} boxes of "
        f"{target} findings; density {density}",
        f"  {len(unlocated)} findings without coordinates (image label only, no box)" + (f": {', '.join(unlocated)}" if unlocated else ""),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medconv prepare mini-mias", description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, help="the mini-MIAS folder (Info.txt and the mdb*.pgm files)")
    parser.add_argument("--root", dest="root_option", metavar="ROOT", type=Path, help="the same, as an option (like the other adapters)")
    parser.add_argument("--out", type=Path, required=True, help="the manifest to write (FILE.csv) or a folder for manifest.csv")
    parser.add_argument("--target", choices=TARGETS, default="abnormal", help="what is positive (default: abnormal)")
    parser.add_argument("--allow-missing", action="store_true", help="skip Info.txt rows whose PGM is absent")
    args = parser.parse_args(argv)
    root = args.root or args.root_option
    if root is None:
        parser.error("give the mini-MIAS folder: medconv prepare mini-mias ROOT --out manifest.csv")
    manifest, counts = build_manifest(root, args.out, args.target, args.allow_missing)
    print(summary(manifest, args.target, counts))
    return 0
