"""What every modality shares: manifests, patient splits and label fractions, samplers, the base datamodule.

Modality code lives beside it: `medconv.mammo`, `medconv.wsi`; synthetic data in `medconv.demo`.
"""

from __future__ import annotations

import importlib
import warnings

# Class paths that configs saved before the modality split still name (see docs/migration.md).
_MOVED = {
    "MammoDataModule": "medconv.mammo",
    "MammoPatchDataModule": "medconv.mammo",
    "MammoAugment": "medconv.mammo",
    "WSITileDataModule": "medconv.wsi",
    "HEAugment": "medconv.wsi",
    "TileDataset": "medconv.wsi",
}


def __getattr__(name: str):
    if name == "ClassificationDataModule":
        return importlib.import_module("medconv.data.datamodule").ClassificationDataModule
    if name in _MOVED:
        warnings.warn(f"medconv.data.{name} moved to {_MOVED[name]}.{name}; update the config's class_path", FutureWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'medconv.data' has no attribute {name!r}")


__all__ = ["ClassificationDataModule"]
