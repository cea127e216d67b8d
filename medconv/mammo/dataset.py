"""Mammogram samples: read, prepare (crop breast, flip to canonical side, resize-pad), cache, augment.

Prepared arrays are cached as 16-bit .npy keyed by the source file's identity and the prepared size, so
DICOM is decoded once per run configuration rather than every epoch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medconv import keys
from medconv.data.samplers import decode_draw
from medconv.io.atomic import save_npy

PREP_VERSION = 1
MEAN, STD = 0.5, 0.5  # grey mammograms in [0, 1] -> [-1, 1]; ImageNet RGB stats do not apply


def cache_path(cache_dir: str | Path, source: str | Path, image_size: tuple[int, int], laterality: str) -> Path:
    st = os.stat(source)
    ident = f"{Path(source).resolve()}|{st.st_size}|{st.st_mtime_ns}|{image_size}|{laterality}|{PREP_VERSION}"
    return Path(cache_dir) / f"{hashlib.sha1(ident.encode()).hexdigest()}.npy"


def prepare_image(source: str | Path, image_size: tuple[int, int], laterality: str = "") -> np.ndarray:
    """float32 (H, W) in [0, 1]: the breast cropped, chest wall on the left, resized and padded."""
    from medconv.io.mammo import read_mammogram
    from medconv.mammo.prep import preprocess

    mammo = read_mammogram(source)
    side = laterality or mammo.laterality or None
    return preprocess(mammo.pixels, tuple(image_size), laterality=side, source=str(source)).image


def load_prepared(
    source: str | Path, image_size: tuple[int, int], laterality: str = "", cache_dir: str | Path | None = None
) -> np.ndarray:
    """Prepared image from the cache, preparing (and caching, atomically) on a miss."""
    if cache_dir is None:
        return prepare_image(source, image_size, laterality)
    path = cache_path(cache_dir, source, image_size, laterality)
    if path.exists():
        return np.load(path).astype(np.float32) / 65535.0
    image = prepare_image(source, image_size, laterality)
    save_npy(path, np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16))
    return image


class MammoDataset(Dataset):
    """One prepared mammogram per row; the sample dict carries the ids needed for per-breast metrics."""

    def __init__(
        self,
        table: pd.DataFrame,
        image_size: tuple[int, int],
        in_chans: int = 1,
        cache_dir: str | Path | None = None,
        transform: A.Compose | None = None,
        seed: int = 0,
    ):
        self.rows = table.to_dict("records")
        self.image_size = tuple(image_size)
        self.in_chans = in_chans
        self.cache_dir = cache_dir
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, value: int) -> dict:
        index, draw = decode_draw(value, len(self.rows))
        row = self.rows[index]
        image = load_prepared(row["image_path"], self.image_size, row.get("laterality", ""), self.cache_dir)
        if self.transform is not None:
            self.transform.set_random_seed((self.seed * 1_000_003 + draw) % 2**31)
            image = self.transform(image=image)["image"]
        return mammo_sample(image, int(row["label_index"]), row, self.in_chans)


def mammo_recipe(image_size: tuple[int, int]) -> dict:
    """The whole-image preprocessing `mammo.prep.preprocess` applies, as recorded in checkpoints."""
    return {"steps": ["breast_crop", "chest_wall_left", "resize_keep_aspect", "zero_pad"], "image_size": list(image_size),
            "intensity": "[0, 1] per image, then (x - mean) / std", "mean": [MEAN], "std": [STD]}


def mammo_sample(image: np.ndarray, label: int, row: dict, in_chans: int = 1, **extra: object) -> dict:
    """The sample dict of a mammogram or a patch of one: normalised tensor plus the ids that per-breast and
    per-exam metrics group by (an exam defaults to the patient)."""
    x = torch.from_numpy((np.ascontiguousarray(image, dtype=np.float32) - MEAN) / STD)[None]
    if in_chans != 1:
        x = x.expand(in_chans, -1, -1).contiguous()
    return {
        keys.IMAGE: x,
        keys.LABEL: label,
        keys.IMAGE_ID: str(row["image_path"]),
        keys.PATIENT_ID: str(row["patient_id"]),
        keys.EXAM_ID: str(row.get("exam_id") or row["patient_id"]),
        keys.LATERALITY: str(row.get("laterality", "")),
        keys.VIEW: str(row.get("view", "")),
        **extra,
    }
