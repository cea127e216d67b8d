"""Multiple-instance learning data from slide labels: bag datasets (feature files or tile images) and their padding
collate, and the slide-level datamodule. The MIL networks (ABMIL, CLAM-SB, TransMIL) are `medconv.models.mil`."""

from __future__ import annotations

import importlib
import warnings

from medconv.mil.bags import FeatureBagDataset, collate_bags
from medconv.mil.datamodule import MILDataModule
from medconv.mil.tile_bags import TileBagDataset

# Class paths that configs saved before the networks moved to medconv.models.mil still name (docs/migration.md).
_MOVED = {name: "medconv.models.mil" for name in ("ABMIL", "CLAMSB", "GatedAttention", "MILOutput", "TransMIL")}


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"medconv.mil.{name} moved to {_MOVED[name]}.{name}; update the config's class_path", FutureWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'medconv.mil' has no attribute {name!r}")


__all__ = ["FeatureBagDataset", "MILDataModule", "TileBagDataset", "collate_bags"]
