"""Turn INPUT arguments (files, folders, globs) into named slides; DICOM series count as one slide."""

from __future__ import annotations

import glob
from pathlib import Path

from medconv.errors import InputFileError

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}


def slide_name(path: Path) -> str:
    """File name without its extension (and without `.ome` for OME-TIFF)."""
    name = path.name[: -len(path.suffix)] if path.suffix else path.name
    return name[:-4] if name.lower().endswith(".ome") else name


def find_slides(inputs: list[str]) -> list[tuple[str, Path]]:
    """(name, path) per slide, sorted by name. Explicit files are taken whatever their extension.

    Folders are searched recursively for slide extensions; DICOM files of one series (the levels of
    one slide) are one slide, opened through their first file. Raises when an input matches nothing
    or two slides would write to the same output name.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise InputFileError(f"{path}: folder holds no slide files ({', '.join(sorted(SLIDE_SUFFIXES))}).")
            files += found
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
    return sorted(names.items())


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
    except Exception:  # noqa: BLE001 - unreadable files stay separate; opening them reports the error
        return path.name
