"""Whole-slide images: tile datasets over coords stores, H&E augmentations, the tile datamodule, tile export."""

from medconv.wsi.datamodule import WSITileDataModule
from medconv.wsi.tile_dataset import TileDataset
from medconv.wsi.transforms import HEAugment

__all__ = ["HEAugment", "TileDataset", "WSITileDataModule"]
