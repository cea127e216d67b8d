"""Manifest columns for subgroup metrics, looked up for each evaluated sample in the split the datamodule evaluated.

A report asks for `subgroups: [density]`; the datasets need not carry those columns through the batches: every
sample carries its `image_id`, which is its row's `image_path` (mammograms and their patches) or `slide_id`
(slide tiles, MIL bags), so the columns are read from the evaluated split's table (`datamodule.splits`) by it.
A column the manifest lacks is refused before evaluation starts, naming the manifest and its columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from medconv import keys
from medconv.errors import ConfigError

#: the table column that samples' `image_id` is taken from, per kind of dataset (tried in this order)
ID_COLUMNS = ("image_path", "slide_id")
SPLITS = {"test": "test", "val": "val", "validate": "val"}


def split_table(datamodule: object, stage: str) -> pd.DataFrame | None:
    """The evaluated split's rows (all manifest columns), or None when the datamodule keeps no such table."""
    splits = getattr(datamodule, "splits", None)
    return splits.get(SPLITS.get(stage, stage)) if isinstance(splits, dict) else None


def check_columns(datamodule: object, stage: str, columns: Sequence[str]) -> None:
    """Raise ConfigError when a subgroup column is not in the manifest (called before evaluation starts)."""
    table = split_table(datamodule, stage)
    if not columns or table is None:
        return
    missing = [c for c in columns if c not in table.columns]
    if missing:
        manifest = getattr(datamodule, "manifest", None) or "the data"
        raise ConfigError(f"{manifest}: no column {', '.join(map(repr, missing))} for the report's subgroups; its columns are "
                          f"{', '.join(table.columns)}. Add the column to the manifest or change `subgroups` of RunOutputs.")


def with_columns(rows: dict, datamodule: object, stage: str, columns: Sequence[str]) -> tuple[dict, list[str]]:
    """(rows with each named column added as strings, the columns that could not be matched to manifest rows)."""
    wanted = [c for c in columns if c not in rows]
    table = split_table(datamodule, stage)
    if not wanted:
        return rows, []
    if table is None or keys.IMAGE_ID not in rows:
        return rows, wanted
    ids = [str(i) for i in rows[keys.IMAGE_ID]]
    for id_column in ID_COLUMNS:
        if id_column not in table.columns:
            continue
        unique = table.drop_duplicates(id_column)
        lookup = unique.set_index(unique[id_column].astype(str))
        if all(i in lookup.index for i in ids):
            present = [c for c in wanted if c in lookup.columns]
            added = {c: lookup.loc[ids, c].astype(str).tolist() for c in present}
            return rows | added, [c for c in wanted if c not in present]
    return rows, wanted
