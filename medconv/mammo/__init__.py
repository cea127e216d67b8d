"""Mammograms: preparation (window, crop, flip, resize), datasets, augmentations and datamodules."""

from medconv.mammo.datamodule import MammoDataModule
from medconv.mammo.patches import MammoPatchDataModule
from medconv.mammo.transforms import MammoAugment

__all__ = ["MammoAugment", "MammoDataModule", "MammoPatchDataModule"]
