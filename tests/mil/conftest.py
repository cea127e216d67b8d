"""Generated feature bags in the CLAM/TRIDENT layout (HDF5 `features` + `coords`), with a learnable signal: a
positive slide holds a few instances shifted along one direction among noise."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest


def write_bag(path: Path, features: np.ndarray, coords: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        if coords is not None:
            f.create_dataset("coords", data=coords.astype(np.int64))
    return path


def make_bags(root: Path, n_slides: int = 40, dim: int = 16, seed: int = 0, shift: float = 3.0,
              sizes: tuple[int, int] = (16, 48)) -> Path:
    """`root/features/slide_XXX.h5` + `root/manifest.csv` (slide_path, label, patient_id; one patient per slide);
    odd slides are `tumor` with 2-4 shifted instances."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    rows = []
    for i in range(n_slides):
        n = int(rng.integers(*sizes))
        features = rng.normal(size=(n, dim)).astype(np.float16)
        tumour = i % 2 == 1
        if tumour:
            hit = rng.choice(n, int(rng.integers(2, 5)), replace=False)
            features[hit] += (shift * direction).astype(np.float16)
        coords = np.stack([np.arange(n) % 8 * 224, np.arange(n) // 8 * 224], axis=1)
        write_bag(root / "features" / f"slide_{i:03d}.h5", features, coords)
        rows.append({"slide_path": f"slides/slide_{i:03d}.tif", "label": "tumor" if tumour else "normal", "patient_id": f"p{i:03d}"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture
def bags(tmp_path: Path) -> Path:
    """A manifest of 12 small generated bags (features under tmp_path/features)."""
    return make_bags(tmp_path, n_slides=12, dim=8, sizes=(5, 12))


@pytest.fixture
def bag_maker():
    """`make_bags` (and `write_bag` as its attribute) for tests that need other sizes."""
    make_bags.write_bag = write_bag  # type: ignore[attr-defined]
    return make_bags
