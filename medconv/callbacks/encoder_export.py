"""The pretrained encoder as a plain timm state dict that `pretrained_path` loads strictly, with what made it.

`<run>/encoder.safetensors` holds exactly the timm model's keys (no `backbone.model.` prefix, no heads, decoders or
teachers), so timm, medconv and any other timm user load it as is. `<run>/encoder.json` beside it says how to build
the matching model and where the weights came from. Both are rewritten atomically at every checkpoint and at the
end of the fit, so an interrupted run leaves the last complete export.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import save_file

from medconv.callbacks.files import run_dir
from medconv.io.atomic import atomic_path, write_json

WEIGHTS = "encoder.safetensors"
META = "encoder.json"


def encoder_state(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The timm model's tensors, detached, on the CPU, unshared (safetensors refuses tensors sharing storage)."""
    model = getattr(encoder, "model", encoder)
    model = getattr(model, "_orig_mod", model)  # torch.compile keeps the keys under _orig_mod
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def export_encoder(encoder: torch.nn.Module, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Write `encoder.safetensors` and `encoder.json` into `out_dir`; returns the weights' path."""
    weights = Path(out_dir) / WEIGHTS
    with atomic_path(weights) as tmp:
        save_file(encoder_state(encoder), str(tmp), metadata={"format": "pt", "timm_name": str(meta.get("timm_name", ""))})
    write_json(Path(out_dir) / META, meta)
    return weights


class EncoderExport(L.Callback):
    """Exports `pl_module.encoder()` (a pretraining task's) at every checkpoint save and at the end of fit.

    Args:
        dirpath: where to write; the run directory by default.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._export(trainer, pl_module, epochs=trainer.current_epoch + 1)  # saved at the end of that epoch

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._export(trainer, pl_module, epochs=trainer.current_epoch)
        if path is not None:
            print(f"  encoder         {path}  (load it with model.init_args.backbone.init_args.pretrained_path)")

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule, epochs: int) -> Path | None:
        if not trainer.is_global_zero or not hasattr(pl_module, "encoder") or trainer.sanity_checking:
            return None
        out = Path(self.dirpath) if self.dirpath else run_dir(trainer)
        return export_encoder(pl_module.encoder(), out, describe(trainer, pl_module, epochs))


def describe(trainer: L.Trainer, pl_module: L.LightningModule, epochs: int) -> dict[str, Any]:
    """What a user needs to rebuild the model for these weights, and what the weights saw."""
    encoder = pl_module.encoder()
    data = trainer.datamodule
    img_size = getattr(encoder, "img_size", None) or getattr(data, "image_size", None)
    return {
        "timm_name": getattr(encoder, "name", type(getattr(encoder, "model", encoder)).__name__),
        "in_chans": getattr(encoder, "in_chans", getattr(data, "in_chans", None)),
        "img_size": list(img_size) if img_size is not None else None,
        "model_args": getattr(encoder, "model_args", {}),
        "num_features": getattr(encoder, "num_features", None),
        "method": getattr(pl_module, "method", type(pl_module).__name__),
        "data": _data_description(data),
        "epochs": int(epochs),
        "global_step": int(trainer.global_step),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "usage": "model.init_args.backbone.init_args.pretrained_path: <this folder>/encoder.safetensors "
                 "(same name, model_args and in_chans; strict_weights: true checks every key)",
    }


def _data_description(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    out: dict[str, Any] = {"class": f"{type(data).__module__}.{type(data).__name__}"}
    describe_ = getattr(data, "describe", None)
    if callable(describe_):
        out.update(describe_())
    for key in ("views", "manifest", "coords_dir", "root", "image_size", "in_chans", "target_mpp", "tile_size",
                "mean", "std", "val_fraction", "test_fraction", "seed"):
        value = getattr(data, key, None)
        if value is not None and key not in out and isinstance(value, str | int | float | tuple | list):
            out[key] = list(value) if isinstance(value, tuple) else value
    demo_root = getattr(getattr(data, "demo", None), "root", None)
    if demo_root is not None:  # trained on generated data: which set
        out["demo_dir"] = str(demo_root)
    if getattr(data, "source", None) is not None:  # the pretraining data's own source: what the images were
        out["source"] = _data_description(data.source)
    return out
