"""LightningModules (classification; pretraining and MIL come later) and what configs inject into them."""

from medconv.tasks.classification import ClassificationModule
from medconv.tasks.losses import CrossEntropy, FocalLoss
from medconv.tasks.schedules import WarmupCosine

__all__ = ["ClassificationModule", "CrossEntropy", "FocalLoss", "WarmupCosine"]
