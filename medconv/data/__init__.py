"""Manifests, splits, datasets, transforms and datamodules.

Datamodules are imported on first use, so light tools (`medconv demo-data`, `medconv tile`) don't pay
for Lightning and albumentations.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ClassificationDataModule": "medconv.data.datamodule",
    "MammoDataModule": "medconv.data.mammo_datamodule",
    "MammoAugment": "medconv.data.mammo_transforms",
    "WSITileDataModule": "medconv.data.wsi_datamodule",
    "MammoPatchDataModule": "medconv.data.mammo_patches",
    "HEAugment": "medconv.data.he_transforms",
    "TileDataset": "medconv.data.tile_dataset",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medconv.data' has no attribute {name!r}")


__all__ = sorted(_LAZY)
