"""Self-supervised pretraining: masking per family, decoders, one objective per file (each an nn.Module -> loss).

Kept light: objectives are imported on first use (`from medconv.ssl import MaskedImageModelling`).
"""

from importlib import import_module

_EXPORTS = {
    "MaskedImageModelling": "medconv.ssl.mim",
    "DINO": "medconv.ssl.dino",
    "ImageFolder": "medconv.ssl.folder",
    "PretrainDataModule": "medconv.ssl.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medconv.ssl' has no attribute {name!r}")
