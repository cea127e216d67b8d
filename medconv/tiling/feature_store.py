"""Per-slide feature files: a coords store (`coords_store.py`) with a `features` dataset beside its `coords`.

The interchange format between `medconv embed` (writes), MIL training bags and MIL inference (read): a medconv
file holds `features` (N, D) float16|float32 and `coords` (N, 2) int64 level-0 top-left, with the coords store's
attributes on `coords` (CLAM's and TRIDENT's names) and the encoder record and run parameters on the file
(docs/embedding.md). `read_features` also takes CLAM's h5 files (`features` + `coords`, no attributes), TRIDENT's
(`features_<encoder>/<slide>.h5`) and CLAM's `.pt` tensors. `encoder_fingerprint` identifies the encoder record a
file carries, so a bag made by another encoder is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medconv.errors import InputFileError
from medconv.io.atomic import atomic_path
from medconv.tiling.coords_store import plain_attr

FORMAT = "medconv-features/1"
PT_SUBDIR = "pt_files"  # CLAM's folder of `<slide>.pt` feature tensors


@dataclass
class FeatureBag:
    """One slide's tile features: what a MIL model takes as one bag."""

    features: np.ndarray  # (N, D) float32
    coords: np.ndarray | None  # (N, 2) int64 level-0 top-left; None for CLAM .pt files
    attrs: dict[str, Any] = field(default_factory=dict)  # the `coords` attributes, then the file's (file wins)
    encoder: dict[str, Any] | None = None  # medconv files: the encoder record (`encoder_from_info` rebuilds it)


def encoder_fingerprint(record: dict[str, Any]) -> str:
    """Identifies an encoder's computation (architecture, weights' sha256, normalisation), not where its files lie."""
    keep = {k: v for k, v in record.items() if k not in ("weights", "checkpoint", "config", "export")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def feature_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {"h5": out_dir / f"{name}.h5", "pt": out_dir / PT_SUBDIR / f"{name}.pt"}


def write_features(path: Path, features: np.ndarray, coords: np.ndarray, coords_attrs: dict[str, Any],
                   file_attrs: dict[str, Any], dtype: str = "float16") -> Path:
    """Write a medconv feature file atomically; `complete` is set last, so a file with it is whole."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(coords):
        raise ValueError(f"features {features.shape} do not match {len(coords)} coords")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features.astype(dtype))
        dset = f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        for key, value in coords_attrs.items():  # as `medconv.tiling.coords_store.write_coords` writes them
            if value is not None:
                dset.attrs[key] = str(value) if isinstance(value, Path) else np.asarray(value) \
                    if isinstance(value, (list, tuple)) else value
        for key, value in file_attrs.items():
            if value is not None:
                f.attrs[key] = np.asarray(value) if isinstance(value, (list, tuple)) else value
        f.attrs["format"] = FORMAT
        f.attrs["complete"] = True
    return path


def write_pt(path: Path, features: np.ndarray) -> Path:
    """CLAM's `pt_files/<slide>.pt`: the features as a float32 (N, D) tensor (CLAM's models are float32)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(torch.from_numpy(np.asarray(features, dtype=np.float32)), tmp)
    return path


def file_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of a complete medconv feature file, else None (absent, partial, unreadable, other format)."""
    try:
        with h5py.File(path, "r") as f:
            return open_file_attrs(f)
    except OSError:
        return None


def open_file_attrs(f: h5py.File) -> dict[str, Any] | None:
    """`file_attrs` of an already open file (callers that also read its header open it once)."""
    attrs = {k: plain_attr(v) for k, v in f.attrs.items()}
    ok = "features" in f and "coords" in f
    return attrs if ok and attrs.get("format") == FORMAT and attrs.get("complete") else None


def read_features(path: str | Path) -> FeatureBag:
    """A slide's features from a medconv, CLAM or TRIDENT h5 file, or a CLAM `.pt` file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: feature file not found; run `medconv embed` on the slide first.")
    if path.suffix in (".pt", ".pth"):
        return _read_pt(path)
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise InputFileError(f"{path}: no `features` dataset (datasets: {sorted(f)}); it is not a feature file "
                                     "(a coords store or `medconv infer` scores?). Run `medconv embed` to make one.")
            features = np.asarray(f["features"][()], dtype=np.float32)
            coords = np.asarray(f["coords"][()], dtype=np.int64) if "coords" in f else None
            attrs = {k: plain_attr(v) for k, v in f["coords"].attrs.items()} if "coords" in f else {}
            attrs.update({k: plain_attr(v) for k, v in f.attrs.items()})
    except OSError as err:
        raise InputFileError(f"{path}: unreadable HDF5 ({err}); delete it and re-run `medconv embed`.") from err
    if attrs.get("format") == FORMAT and not attrs.get("complete"):
        raise InputFileError(f"{path}: written only in part; delete it and re-run `medconv embed`.")
    features = _bag_shape(features, path)
    if coords is not None:
        coords = coords.reshape(-1, 2)
        if len(coords) != len(features):
            raise InputFileError(f"{path}: {len(features)} feature rows but {len(coords)} coords; re-run the embedding.")
    encoder = None
    if isinstance(attrs.get("encoder"), str):
        try:
            encoder = json.loads(attrs["encoder"])
        except ValueError:
            encoder = None
    return FeatureBag(features, coords, attrs, encoder)


def _read_pt(path: Path) -> FeatureBag:
    import pickle

    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise InputFileError(f"{path}: unreadable .pt file ({type(err).__name__}: {err}); re-run the embedding.") from err
    coords = None
    if isinstance(value, dict):  # some pipelines save {"features": ..., "coords": ...}
        if "features" not in value:
            raise InputFileError(f"{path}: a dict without `features` (keys: {sorted(value)[:10]}); not a feature file.")
        coords = value.get("coords")
        value = value["features"]
    if not isinstance(value, torch.Tensor):
        raise InputFileError(f"{path}: holds a {type(value).__name__}, not a features tensor (N, D) as CLAM writes.")
    features = _bag_shape(value.float().numpy(), path)
    if coords is not None:
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    return FeatureBag(features, coords, {}, None)


def _bag_shape(features: np.ndarray, path: Path) -> np.ndarray:
    if features.ndim == 3 and features.shape[0] == 1:  # (1, N, D): a batch of one bag
        features = features[0]
    if features.ndim != 2:
        raise InputFileError(f"{path}: features of shape {features.shape}; expected (N tiles, D features).")
    if len(features) == 0:
        raise InputFileError(f"{path}: no tiles (features of shape {features.shape}); a MIL bag needs at least one, so "
                             "re-embed the slide with a lower --min-tissue or leave it out of the manifest.")
    return np.ascontiguousarray(features, dtype=np.float32)
