"""INPUT arguments -> slide jobs: files, folders and globs as `medconv tile` finds them, plus manifest CSVs.

A `SlideJob` names one slide of a run (its output name, file and mpp override); every slide command
(`medconv infer`, `medconv embed`) starts from the list `slide_jobs` makes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medconv.errors import InputFileError, ManifestError
from medconv.tiling.inputs import find_inputs, slide_name


@dataclass(frozen=True)
class SlideJob:
    name: str
    path: Path
    mpp: float | None = None  # per-slide override (manifest `mpp` column or --slide-mpp)


def slide_jobs(inputs: list[str], exclude: Iterable[Path] = (), slide_mpp: float | None = None,
               ) -> tuple[list[SlideJob], list[tuple[Path, str]]]:
    """Jobs sorted by name and the files folders held that are not slides (path, reason).

    A `.csv` INPUT is a manifest: `slide_path` (relative to the CSV's folder) and optional `slide_id`, `mpp`.
    `slide_mpp` overrides every slide's mpp. Two slides with one name are refused (their outputs would collide).
    """
    manifests = [i for i in inputs if i.lower().endswith(".csv") and Path(i).is_file()]
    others = [i for i in inputs if i not in manifests]
    jobs: dict[str, SlideJob] = {}
    skipped: list[tuple[Path, str]] = []
    if others:
        found, skipped = find_inputs(others, exclude=exclude)
        for name, path in found:
            _add(jobs, SlideJob(name, Path(path), slide_mpp))
    for manifest in manifests:
        for job in manifest_jobs(Path(manifest), slide_mpp):
            _add(jobs, job)
    return [jobs[k] for k in sorted(jobs)], skipped


def manifest_jobs(manifest: Path, slide_mpp: float | None = None) -> list[SlideJob]:
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if "slide_path" not in table.columns:
        raise ManifestError(f"{manifest}: needs a slide_path column (has {list(table.columns)}).")
    jobs, problems = [], []
    for i, row in enumerate(table.to_dict("records")):
        path = Path(row["slide_path"]).expanduser()
        path = path if path.is_absolute() else manifest.parent / path
        if not path.exists():
            problems.append(f"row {i + 2}: {path} not found")
            continue
        mpp = slide_mpp if slide_mpp is not None else float(row["mpp"]) if row.get("mpp") else None
        jobs.append(SlideJob(row.get("slide_id") or slide_name(path), path, mpp))
    if problems:
        raise ManifestError(f"{manifest}: " + "; ".join(problems[:20]) + ("; ..." if len(problems) > 20 else ""))
    return jobs


def _add(jobs: dict[str, SlideJob], job: SlideJob) -> None:
    if job.name in jobs and jobs[job.name].path.resolve() != job.path.resolve():
        raise InputFileError(f"two slides would share the output name {job.name!r}: {jobs[job.name].path} and {job.path}; "
                             "give them different slide_id values in a manifest or run them into different --out folders.")
    jobs[job.name] = job
