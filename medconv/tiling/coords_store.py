"""Per-slide HDF5 coords store: level-0 (x, y) of tile corners plus what is needed to read them back.

Layout (see docs/tiling.md): dataset `coords` int64 (N, 2); its attributes carry CLAM's names
(patch_size, patch_level, downsample, level_dim, downsampled_level_dim, name, save_path), TRIDENT's
(patch_size_level0, level0_magnification, target_magnification, overlap) and medconv's own.
A file is complete only when its `complete` attribute is set: it is written to a temp file and
renamed, so a file that exists with that flag is never half written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medconv.errors import InputFileError
from medconv.io.atomic import atomic_path

FORMAT = "medconv-coords/1"


def write_coords(path: str | Path, coords: np.ndarray, attrs: dict[str, Any], extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write `coords` (N, 2) with `attrs` on the dataset, atomically; `extra` adds datasets (e.g. tissue fraction)."""
    path = Path(path)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        dset = f.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=(max(1, min(len(coords), 4096)), 2))
        for key, value in attrs.items():
            if value is None:
                continue
            dset.attrs[key] = _attr_value(value)
        for key, value in (extra or {}).items():
            f.create_dataset(key, data=np.asarray(value))
        f.attrs["format"] = FORMAT
        f.attrs["complete"] = True
    return path


def _attr_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return np.asarray(value)
    return value


def read_coords(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Coords (N, 2) int64 and the attributes of the `coords` dataset as plain Python values.

    Also reads CLAM/TRIDENT files (they have the same `coords` dataset); medconv-only keys are then absent.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: coords file not found; run `medconv tile` on the slide first.")
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise InputFileError(f"{path}: no `coords` dataset; it is not a coords store, re-run `medconv tile`.")
            dset = f["coords"]
            coords = np.asarray(dset[()], dtype=np.int64).reshape(-1, 2)
            attrs = {k: plain_attr(v) for k, v in dset.attrs.items()}
    except OSError as err:
        raise InputFileError(f"{path}: unreadable HDF5 ({err}); delete it and re-run `medconv tile`.") from err
    return coords, attrs


def read_dataset(path: str | Path, name: str) -> np.ndarray | None:
    """An extra dataset (e.g. `tissue_fraction`), or None when the file has none."""
    with h5py.File(path, "r") as f:
        return np.asarray(f[name][()]) if name in f else None


def is_complete(path: str | Path) -> bool:
    """True when `path` is a coords store that was written to the end."""
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False)) and "coords" in f
    except (OSError, FileNotFoundError):
        return False


def plain_attr(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (str, list, int/float), for JSON and comparisons."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
