"""LightningModules (classification, self-supervised pretraining; MIL comes later) and what configs inject into them."""

from medconv.tasks.classification import ClassificationModule
from medconv.tasks.losses import CrossEntropy, FocalLoss
from medconv.tasks.pretrain import PretrainModule
from medconv.tasks.schedules import WarmupCosine

__all__ = ["ClassificationModule", "CrossEntropy", "FocalLoss", "PretrainModule", "WarmupCosine"]
