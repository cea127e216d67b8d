"""`medconv export`: runs out in the timm / Hugging Face hub format (config.json, model.safetensors, model card)."""

from medconv.export.run import Export, export_run

__all__ = ["Export", "export_run"]
