"""Turn INPUT arguments (files, folders, globs) into named slides; DICOM series count as one slide.

Files a folder search does not take are reported with the reason (the summary lists them as skipped), so
a slide saved under an unexpected extension is noticed rather than silently missing from a run.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from medconv.errors import InputFileError

#: what OpenSlide reads (TIFF-based vendor formats, MRXS, VMS, DICOM WSI)
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}
#: plain images, tiled as one-level slides (given --slide-mpp when they carry no mpp)
IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}
INPUT_SUFFIXES = SLIDE_SUFFIXES | IMAGE_SUFFIXES


def slide_name(path: Path) -> str:
    """File name without its extension (and without `.ome` for OME-TIFF)."""
    name = path.name[: -len(path.suffix)] if path.suffix else path.name
    return name[:-4] if name.lower().endswith(".ome") else name


def find_slides(inputs: list[str]) -> list[tuple[str, Path]]:
    """(name, path) per slide, sorted by name; see `find_inputs`."""
    return find_inputs(inputs)[0]


def find_inputs(inputs: list[str], exclude: Iterable[Path] = ()) -> tuple[list[tuple[str, Path]], list[tuple[Path, str]]]:
    """Slides as (name, path) sorted by name, and the files folders held that are not slides, as (path, reason).

    Explicit files and glob matches are taken whatever their extension. Folders are searched recursively for
    `INPUT_SUFFIXES`, leaving out hidden files (our temp files among them), folders in `exclude` (the output
    folder) and the companion files of MRXS and VMS slides. DICOM files of one series (the levels of one
    slide) are one slide, opened through their first file. Raises when an input matches nothing or two slides
    would write to the same output name.
    """
    excluded = [Path(p).resolve() for p in exclude]
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found, passed = _search(path, excluded)
            if not found:
                some = "; ".join(f"{p.name}: {why}" for p, why in passed[:3])
                raise InputFileError(
                    f"{path}: folder holds no slide files ({', '.join(sorted(INPUT_SUFFIXES))})"
                    + (f"; it has {len(passed)} other file(s), e.g. {some}." if passed else ".")
                )
            files += found
            skipped += passed
        elif path.is_file():
            files.append(path)
        elif any(c in item for c in "*?["):
            matched = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matched:
                raise InputFileError(f"{item}: pattern matches no file; check the pattern (quote it to stop the shell expanding it).")
            files += matched
        else:
            raise InputFileError(f"{path}: no such file or folder; check the path.")
    slides = _group_dicom(list(dict.fromkeys(files)))
    names: dict[str, Path] = {}
    for name, path in slides:
        if name in names and names[name].resolve() != path.resolve():
            raise InputFileError(
                f"two slides would share the output name {name!r}: {names[name]} and {path}; "
                "tile them into different --out folders or rename one."
            )
        names[name] = path
    taken = {p.resolve() for p in files}
    skipped = [(p, why) for p, why in dict(skipped).items() if p.resolve() not in taken]
    return sorted(names.items()), skipped


def _search(folder: Path, excluded: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Slide files under `folder` and the other files with the reason each is not taken."""
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not any(p.resolve().is_relative_to(ex) for ex in excluded)
    )
    companions = _companions(files)
    found, skipped = [], []
    for p in files:
        if p in companions:
            continue
        reason = skip_reason(p)
        if reason:
            skipped.append((p, reason))
        else:
            found.append(p)
    return found, skipped


def skip_reason(path: Path) -> str | None:
    """Why a folder search does not take `path` as a slide, or None when it does."""
    suffix = path.suffix.lower()
    if suffix == ".png" and _is_medconv_png(path):
        return "a medconv mask or QC image, not a slide"
    if suffix in INPUT_SUFFIXES:
        return None
    if path.name.upper() == "DICOMDIR":
        return "DICOM directory index, not an image"
    if _is_dicom(path):
        return "DICOM file without the .dcm extension: rename it to .dcm or give it as an INPUT itself"
    return f"unknown extension {path.suffix}" if path.suffix else "no extension"


def _companions(files: list[Path]) -> set[Path]:
    """Data files that belong to an MRXS slide (its folder) or a VMS/VMU slide (the files it lists)."""
    out: set[Path] = set()
    for f in files:
        suffix = f.suffix.lower()
        if suffix == ".mrxs":
            data_dir = f.with_suffix("")
            out |= {p for p in files if p.is_relative_to(data_dir)}
        elif suffix in (".vms", ".vmu"):
            try:
                lines = f.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                key, sep, value = line.partition("=")
                if sep and key.strip().startswith(("ImageFile", "MapFile", "OptimisationFile")) and value.strip():
                    out.add(f.parent / value.strip())
    return out


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _is_medconv_png(path: Path) -> bool:
    """Our tissue masks and QC overlays carry `medconv.*` text chunks."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return any(str(key).startswith("medconv.") for key in im.info)
    except Exception:
        return False


def _group_dicom(files: list[Path]) -> list[tuple[str, Path]]:
    """One entry per non-DICOM file; DICOM files grouped by folder and SeriesInstanceUID."""
    out: list[tuple[str, Path]] = []
    series: dict[tuple[Path, str], list[Path]] = {}
    for f in files:
        if f.suffix.lower() != ".dcm":
            out.append((slide_name(f), f))
            continue
        series.setdefault((f.parent, _series_uid(f)), []).append(f)
    per_folder: dict[Path, int] = {}
    for folder, _ in series:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    for (folder, uid), members in series.items():
        members.sort()
        if len(members) == 1:
            name = slide_name(members[0])
        else:
            name = folder.name if per_folder[folder] == 1 else f"{folder.name}_{uid[-8:]}"
        out.append((name, members[0]))
    return out


def _series_uid(path: Path) -> str:
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return str(ds.get("SeriesInstanceUID", path.name))
    except Exception:
        return path.name
