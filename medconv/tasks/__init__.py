"""LightningModules (classification, self-supervised pretraining, slide-level MIL) and what configs inject into them."""

from medconv.tasks.classification import ClassificationModule
from medconv.tasks.losses import CrossEntropy, FocalLoss
from medconv.tasks.mil import MILModule
from medconv.tasks.pretrain import PretrainModule
from medconv.tasks.schedules import WarmupCosine

__all__ = ["ClassificationModule", "CrossEntropy", "FocalLoss", "MILModule", "PretrainModule", "WarmupCosine"]
