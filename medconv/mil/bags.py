"""Per-slide feature bags: one sample per slide, and the collate that pads bags of different sizes.

A bag file is the CLAM/TRIDENT layout: HDF5 with `features` (N, D) float16/32 and `coords` (N, 2) int64, or
CLAM's `.pt` (a features tensor). Training may subsample a bag (`max_instances`) with randomness drawn from
the sampler's (seed, epoch, position), so a resumed run sees the bags an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from medconv import keys
from medconv.data.samplers import decode_draw
from medconv.tiling.feature_store import open_file_attrs, read_features

# Keys whose first dimension is the bag's instances: padded by `collate_bags`.
INSTANCE_KEYS = (keys.FEATURES, keys.IMAGE, keys.COORDS)
def bag_header(path: str | Path) -> tuple[tuple[int, int], dict[str, Any]]:
    """(N, D) of a bag file and its medconv attributes ({} for CLAM/TRIDENT files), from one open of the HDF5
    header where possible: manifest validation reads every bag, so it must not read the features twice."""
    path = Path(path)
    if path.suffix not in (".pt", ".pth") and path.is_file():
        try:
            with h5py.File(path, "r") as f:
                if "features" in f and f["features"].ndim == 2 and f["features"].shape[0] > 0:
                    shape = tuple(int(s) for s in f["features"].shape)
                    return shape, open_file_attrs(f) or {}  # type: ignore[return-value]
        except OSError:
            pass  # read_features words the error
    bag = read_features(path)
    return bag.features.shape, {}  # type: ignore[return-value]


class FeatureBagDataset(Dataset):
    """Samples: features (N, D) float32, coords (N, 2) int64 when the file has them, label, slide_id, patient_id,
    image_id (= slide_id, so evaluation counts a slide once under DDP padding).

    `max_instances`: a bag larger than this is subsampled at random (without replacement, instance order kept),
    drawn anew every epoch; None keeps whole bags (use it for evaluation).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        slide_ids: Sequence[str],
        patient_ids: Sequence[str],
        max_instances: int | None = None,
        seed: int = 0,
    ):
        self.paths = list(paths)
        self.labels = [int(y) for y in labels]
        self.slide_ids, self.patient_ids = list(slide_ids), list(patient_ids)
        self.max_instances = max_instances
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, value: int) -> dict[str, Any]:
        index, draw = decode_draw(int(value), len(self))
        bag = read_features(self.paths[index])
        features, coords = bag.features, bag.coords
        if self.max_instances is not None and len(features) > self.max_instances:
            rng = np.random.default_rng((self.seed, draw, index))
            keep = np.sort(rng.choice(len(features), self.max_instances, replace=False))
            features, coords = features[keep], None if coords is None else coords[keep]
        sample = {
            keys.FEATURES: torch.from_numpy(np.ascontiguousarray(features)),
            keys.LABEL: self.labels[index],
            keys.SLIDE_ID: self.slide_ids[index],
            keys.IMAGE_ID: self.slide_ids[index],
            keys.PATIENT_ID: self.patient_ids[index],
        }
        if coords is not None:
            sample[keys.COORDS] = torch.from_numpy(np.ascontiguousarray(coords))
        return sample


def collate_bags(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Bags of N_i instances -> a batch padded to max N_i with zeros, plus `mask` (B, N) bool (True = real).

    Instance keys (features, image, coords) are padded when every sample has them; labels become a tensor;
    ids stay lists.
    """
    present = [k for k in INSTANCE_KEYS if all(k in s for s in samples)]
    if not present:
        raise ValueError(f"collate_bags: samples have none of {INSTANCE_KEYS}")
    sizes = [len(s[present[0]]) for s in samples]
    width = max(sizes)
    batch: dict[str, Any] = {}
    for key in present:
        first = samples[0][key]
        padded = first.new_zeros((len(samples), width, *first.shape[1:]))
        for i, s in enumerate(samples):
            padded[i, : sizes[i]] = s[key]
        batch[key] = padded
    batch[keys.MASK] = torch.arange(width)[None, :] < torch.tensor(sizes)[:, None]
    for key in samples[0]:
        if key in INSTANCE_KEYS:
            continue
        values = [s[key] for s in samples]
        batch[key] = torch.tensor(values) if key == keys.LABEL else values
    return batch
