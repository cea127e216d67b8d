"""Pieces every dataset adapter needs: tolerant column lookup, clear errors, atomic manifest writes."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medconv.errors import InputFileError

MANIFEST_COLUMNS = ["image_path", "label", "patient_id", "exam_id", "laterality", "view", "mask_path", "boxes"]


def norm_column(name: str) -> str:
    """'breast_density', 'Breast  Density ' -> 'breast density': published CSVs are not consistent."""
    return re.sub(r"[\s_]+", " ", str(name)).strip().lower()


def read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """Read a CSV with normalised column names; InputFileError naming every missing column."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as err:
        raise InputFileError(f"{path} does not exist") from err
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise InputFileError(f"{path} is not a readable CSV ({err})") from err
    frame.columns = [norm_column(c) for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputFileError(
            f"{path} lacks the column(s) {', '.join(repr(c) for c in missing)}; found {list(frame.columns)}. "
            "Is it the dataset's original annotation file?"
        )
    return frame.apply(lambda col: col.str.strip())


def relpath(path: Path, start: Path) -> str:
    """Manifest paths are relative to the manifest's folder so that the whole set can be moved."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # unique: concurrent writers never collide
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_manifest(frame: pd.DataFrame, path: Path) -> Path:
    atomic_write_bytes(path, frame.to_csv(index=False, lineterminator="\n").encode())
    return path


def write_mask_png(mask: np.ndarray, path: Path) -> None:
    ok, buf = cv2.imencode(".png", np.asarray(mask, bool).astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError(f"PNG encoding of {path} failed")
    atomic_write_bytes(path, buf.tobytes())


def mask_box(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] (x1, y1 exclusive) of a mask's pixels, None when empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def missing_files_error(kind: str, missing: list[str], root: Path, hint: str) -> InputFileError:
    shown = "\n  ".join(missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    return InputFileError(f"{len(missing)} {kind} not found under {root}:\n  {shown}{more}\n{hint}")
