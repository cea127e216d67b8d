"""A timm model as a feature extractor: the task owns the head, the data decides input size and channels."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


class TimmBackbone(nn.Module):
    """Any timm model name, returning pooled features of size `num_features`.

    `img_size` and `in_chans` are linked from the data config by the CLI; models that fix their input
    size at construction (ViT, Swin, Hiera, ...) get it there. No hub downloads: weights come only from
    `pretrained_path`.
    """

    def __init__(
        self,
        name: str = "convnext_tiny",
        in_chans: int = 3,
        img_size: tuple[int, int] | None = None,
        pretrained_path: str | None = None,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        model_args: dict | None = None,
    ):
        super().__init__()
        self.name = name
        kwargs = dict(model_args or {})
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        if img_size is not None and _takes_img_size(name):
            kwargs["img_size"] = tuple(img_size)
        self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
        self.num_features: int = self.model.num_features
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if pretrained_path:
            load_local_weights(self.model, pretrained_path)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _takes_img_size(name: str) -> bool:
    """Whether the architecture fixes its input size at construction (position embeddings, windows)."""
    import inspect

    entry = timm.models.get_model_entrypoint(name)
    module = inspect.getmodule(entry)
    cls_names = ("VisionTransformer", "SwinTransformer", "SwinTransformerV2", "Hiera", "Eva", "Beit", "DeiT")
    return any(hasattr(module, c) for c in cls_names) and "img_size" in inspect.signature(
        getattr(module, next(c for c in cls_names if hasattr(module, c))).__init__
    ).parameters


def load_local_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local timm/safetensors/torch state dict; report missing and unexpected keys, never hide them."""
    from medconv.errors import InputFileError

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: pretrained weights not found; pass a local file to pretrained_path.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "backbone"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        import warnings

        warnings.warn(
            f"{path}: {len(result.missing_keys)} missing keys {result.missing_keys[:5]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:5]}",
            stacklevel=2,
        )
