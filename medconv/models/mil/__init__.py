"""MIL networks over bags of tile features: attention pooling (ABMIL), CLAM-SB and TransMIL.

Every aggregator answers `forward(features (B, N, D), mask (B, N) bool | None, labels (B,) | None) -> MILOutput`.
Configs name them `medconv.models.mil.ABMIL`, `medconv.models.mil.CLAMSB`, `medconv.models.mil.TransMIL`.
"""

from medconv.models.mil.clam import CLAMSB
from medconv.models.mil.pooling import ABMIL, GatedAttention, MILOutput
from medconv.models.mil.transmil import TransMIL

__all__ = ["ABMIL", "CLAMSB", "GatedAttention", "MILOutput", "TransMIL"]
