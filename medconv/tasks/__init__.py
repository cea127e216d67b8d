"""LightningModules: classification (pretraining and MIL come later)."""

from medconv.tasks.classification import ClassificationModule

__all__ = ["ClassificationModule"]
