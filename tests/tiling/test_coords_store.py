"""Coords store: round trip, CLAM/TRIDENT attribute names, completeness of interrupted writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from medconv.errors import InputFileError
from medconv.tiling.coords_store import is_complete, read_coords, read_dataset, write_coords


def test_round_trip(tmp_path):
    coords = np.array([[0, 0], [256, 512]])
    attrs = {"patch_size": 256, "patch_level": 0, "downsample": (1.0, 1.0), "name": "s", "target_mpp": 0.5}
    path = write_coords(tmp_path / "s.h5", coords, attrs, extra={"tissue_fraction": np.array([0.5, 1.0], np.float32)})
    got, got_attrs = read_coords(path)
    assert got.dtype == np.int64 and got.tolist() == coords.tolist()
    assert got_attrs["patch_size"] == 256 and got_attrs["downsample"] == [1.0, 1.0] and got_attrs["name"] == "s"
    assert read_dataset(path, "tissue_fraction").tolist() == [0.5, 1.0]
    assert is_complete(path)
    assert not list(tmp_path.glob(".*tmp"))


def test_empty_coords(tmp_path):
    path = write_coords(tmp_path / "e.h5", np.zeros((0, 2)), {"patch_size": 256})
    coords, _ = read_coords(path)
    assert coords.shape == (0, 2)


def test_clam_style_file_is_readable(tmp_path):
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("coords", data=np.array([[10, 20]]))
        d.attrs["patch_level"] = 0
        d.attrs["patch_size"] = 224
    coords, attrs = read_coords(path)
    assert coords.tolist() == [[10, 20]] and attrs == {"patch_level": 0, "patch_size": 224}
    assert not is_complete(path)  # not ours: no completion flag, a rerun redoes it


def test_truncated_and_missing_files(tmp_path):
    good = write_coords(tmp_path / "g.h5", np.zeros((100, 2)), {})
    bad = tmp_path / "bad.h5"
    bad.write_bytes(good.read_bytes()[:200])
    assert not is_complete(bad)
    with pytest.raises(InputFileError, match="bad.h5"):
        read_coords(bad)
    with pytest.raises(InputFileError, match="not found"):
        read_coords(tmp_path / "missing.h5")
