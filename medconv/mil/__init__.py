"""Multiple-instance learning from slide labels: aggregators over bags of tile features (ABMIL, CLAM-SB, TransMIL),
bag datasets and their padding collate, and the slide-level datamodule."""

from medconv.mil.bags import FeatureBagDataset, collate_bags
from medconv.mil.clam import CLAMSB
from medconv.mil.datamodule import MILDataModule
from medconv.mil.pooling import ABMIL, GatedAttention, MILOutput
from medconv.mil.tile_bags import TileBagDataset
from medconv.mil.transmil import TransMIL

__all__ = ["ABMIL", "CLAMSB", "FeatureBagDataset", "GatedAttention", "MILDataModule", "MILOutput", "TileBagDataset", "TransMIL",
           "collate_bags"]
