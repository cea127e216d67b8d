"""Backbones over timm (CNNs, hierarchical ViTs, GResNet registered with timm), attention-kernel control."""

import medconv.models.gresnet  # noqa: F401  (registers gresnet50 and its small variants with timm)
from medconv.models.attention import attention_modules, sdpa_backends, use_sdpa
from medconv.models.backbone import TimmBackbone
from medconv.models.weights import WeightReport, load_local_weights

__all__ = ["TimmBackbone", "WeightReport", "attention_modules", "load_local_weights", "sdpa_backends", "use_sdpa"]
