"""Manifests: CSV files with documented columns, validated whole before any training starts.

Every problem (missing column, missing or unreadable file, unknown label, a patient in two splits)
is collected and reported in one `ManifestError`, so a user fixes a manifest in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from medconv.errors import InputFileError, ManifestError

SPLITS = ("train", "val", "test")
MAX_REPORTED = 50


def read_manifest(
    path: str | Path,
    required_columns: Sequence[str],
    path_columns: Sequence[str] = (),
    optional_path_columns: Sequence[str] = (),
    classes: Sequence[str] | None = None,
    label_column: str = "label",
    group_column: str = "patient_id",
    labels_optional: bool = False,
) -> pd.DataFrame:
    """Read and validate a manifest; relative paths are resolved against the manifest's folder."""
    table, problems = validate_manifest(path, required_columns, path_columns, optional_path_columns, classes, label_column, group_column,
                                        labels_optional)
    raise_if_problems(path, problems)
    return table


def validate_manifest(
    path: str | Path,
    required_columns: Sequence[str],
    path_columns: Sequence[str] = (),
    optional_path_columns: Sequence[str] = (),
    classes: Sequence[str] | None = None,
    label_column: str = "label",
    group_column: str = "patient_id",
    labels_optional: bool = False,
) -> tuple[pd.DataFrame, list[str]]:
    """The table and every problem found (empty list when valid), for callers that add checks of their own.

    `labels_optional` (self-supervised pretraining): a manifest without the label column is read as unlabelled
    (every label empty) instead of being refused."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: manifest not found; pass an existing CSV file (columns: {', '.join(required_columns)}).")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ManifestError(f"{path}: not a readable CSV ({err}).") from err
    if labels_optional and label_column not in table.columns:
        table[label_column] = ""
    missing = [c for c in required_columns if c not in table.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(table.columns) or 'none'}. "
            f"A manifest needs at least: {', '.join(required_columns)}."
        )
    problems: list[str] = []
    base = path.parent
    for column in (*path_columns, *optional_path_columns):
        if column not in table.columns:
            continue
        resolved = []
        for i, value in enumerate(table[column]):
            if not value:
                if column in path_columns:
                    problems.append(f"row {i + 2}: empty {column}")
                resolved.append("")
                continue
            p = Path(value).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.exists():
                problems.append(f"row {i + 2}: {column} {value!r} does not exist ({p})")
            resolved.append(str(p))
        table[column] = resolved
    if classes is not None:
        known = set(classes)
        for i, label in enumerate(table[label_column]):
            if label not in known:
                problems.append(f"row {i + 2}: label {label!r} is not one of the configured classes {list(classes)}")
    for i, group in enumerate(table[group_column]):
        if not group.strip():
            problems.append(f"row {i + 2}: empty {group_column}")
    if "split" in table.columns:
        problems += split_problems(table, group_column)
    return table, problems


def split_problems(table: pd.DataFrame, group_column: str = "patient_id") -> list[str]:
    """Unknown split names and patients whose rows sit in more than one split (leakage)."""
    problems = []
    bad = sorted(set(table["split"]) - set(SPLITS) - {""})
    if bad:
        problems.append(f"unknown split value(s) {bad}; use {', '.join(SPLITS)} (or leave empty to split by patient)")
    per_group = table[table["split"] != ""].groupby(group_column)["split"].nunique()
    for group in per_group[per_group > 1].index:
        splits = sorted(set(table.loc[table[group_column] == group, "split"]))
        problems.append(f"{group_column} {group!r} appears in several splits {splits}: splits must be by patient")
    return problems


def check_rows(table: pd.DataFrame, column: str, check: Callable[[str], None]) -> list[str]:
    """Run `check(path)` on every row; collect InputFileError messages instead of stopping at the first."""
    problems = []
    for i, value in enumerate(table[column]):
        try:
            check(value)
        except InputFileError as err:
            problems.append(f"row {i + 2}: {err}")
    return problems


def raise_if_problems(path: str | Path, problems: list[str]) -> None:
    if not problems:
        return
    shown = problems[:MAX_REPORTED]
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    raise ManifestError(
        f"{path}: {len(problems)} problem(s) found; fix them and run again:\n  " + "\n  ".join(shown) + more
    )
