"""Backbones over timm (CNNs, hierarchical ViTs, GResNet registered with timm), heads, attention control."""

from medconv.models.backbone import TimmBackbone

__all__ = ["TimmBackbone"]
