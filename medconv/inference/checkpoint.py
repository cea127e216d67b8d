"""A medconv checkpoint (or run directory) -> the model plus what it was trained with.

The checkpoint holds the weights; the run's config.yaml (written by `medconv fit`) says how to build the
backbone and what the data looked like: image size, channels, normalisation, tile size and target mpp for
slides, the classes. Weights are loaded with `weights_only=True`.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from medconv.errors import CheckpointError, MedconvError
from medconv.run_dirs import is_run, resolve_checkpoint

WSI_DATA = ("WSITileDataModule",)
MAMMO_DATA = ("MammoDataModule",)


@dataclass
class LoadedModel:
    """The model in eval mode and the training settings inference must repeat."""

    module: Any  # medconv.tasks.ClassificationModule
    classes: list[str]
    modality: str  # "wsi" | "mammo"
    image_size: tuple[int, int]
    in_chans: int
    checkpoint: Path
    config: Path
    data_args: dict = field(default_factory=dict)

    @property
    def mean(self) -> tuple[float, ...]:
        from medconv.wsi.transforms import IMAGENET_MEAN

        return tuple(self.data_args.get("mean") or IMAGENET_MEAN)

    @property
    def std(self) -> tuple[float, ...]:
        from medconv.wsi.transforms import IMAGENET_STD

        return tuple(self.data_args.get("std") or IMAGENET_STD)

    @property
    def tile_size(self) -> int | None:
        value = self.data_args.get("tile_size")
        return int(value) if value else None

    @property
    def target_mpp(self) -> float | None:
        value = self.data_args.get("target_mpp")
        return float(value) if value else None

    def fingerprint(self) -> str:
        """Identifies the weights, so outputs of another checkpoint are never taken as done."""
        st = self.checkpoint.stat()
        return f"{self.checkpoint.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint, config.yaml) for a .ckpt file or a run directory (its best checkpoint)."""
    path = Path(path)
    if path.is_dir():
        if not is_run(path):
            raise CheckpointError(f"{path}: not a run directory (no checkpoints/ or summary.json); pass a .ckpt file "
                                  "or the run folder `medconv fit` wrote (runs/<name>/version_N).")
        ckpt = Path(resolve_checkpoint("best", path))
        ckpt = ckpt if ckpt.is_absolute() or ckpt.exists() else path / ckpt
        if not ckpt.exists():  # summary.json paths are relative to where fit ran
            candidates = sorted(p for p in (path / "checkpoints").glob("*.ckpt") if not p.name.startswith("last"))
            if not candidates:
                raise CheckpointError(f"{path}: no checkpoint under checkpoints/; pass a .ckpt file.")
            ckpt = candidates[0]
        run = path
    elif path.is_file():
        ckpt = path
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    else:
        raise CheckpointError(f"{path}: checkpoint not found; pass a .ckpt file or a run directory.")
    config = run / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{ckpt}: no config.yaml in its run directory {run}; medconv needs the run's config to "
                              "rebuild the model. Keep the checkpoint inside runs/<name>/version_N/checkpoints/.")
    return ckpt, config


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the run's model, load the checkpoint's weights and read its data settings."""
    ckpt_path, config_path = find_checkpoint(path)
    config = yaml.safe_load(config_path.read_text()) or {}
    model_cfg, data_cfg = config.get("model") or {}, config.get("data") or {}
    data_args = dict(data_cfg.get("init_args") or {})
    data_class = str(data_cfg.get("class_path", "")).rsplit(".", 1)[-1]
    modality = "wsi" if data_class in WSI_DATA else "mammo" if data_class in MAMMO_DATA else ""
    if not modality:
        raise CheckpointError(f"{config_path}: data class {data_cfg.get('class_path')!r} is not one `medconv infer` runs "
                              f"(slides: {', '.join(WSI_DATA)}; mammograms: {', '.join(MAMMO_DATA)}).")
    state = read_checkpoint(ckpt_path)
    hparams = state.get("hyper_parameters") or {}
    image_size = tuple(int(v) for v in data_args.get("image_size") or (224, 224))
    in_chans = int(data_args.get("in_chans") or (3 if modality == "wsi" else 1))
    module = _build_module(model_cfg, hparams, image_size, in_chans, config_path)
    missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt_path}: weights do not fit the model of {config_path} "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]}).")
    module.eval().to(device)
    classes = _classes(data_cfg, data_args, int(hparams.get("num_classes", 2)))
    return LoadedModel(module, classes, modality, image_size, in_chans, ckpt_path, config_path, data_args)


def read_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    """A checkpoint's tensors and hyper-parameters, with `weights_only=True` (pickled code is refused, not run)."""
    try:
        return torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{ckpt_path}: holds Python objects other than weights, so medconv does not load it.") from err
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{ckpt_path}: unreadable checkpoint ({err}); is it truncated?") from err


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _build_module(model_cfg: dict, hparams: dict, image_size: tuple[int, int], in_chans: int, source: Path) -> Any:
    import medconv.models  # noqa: F401  (registers GResNet with timm)
    from medconv.tasks import ClassificationModule

    model_class = _class(model_cfg.get("class_path", "medconv.tasks.ClassificationModule"))
    if not issubclass(model_class, ClassificationModule):
        raise CheckpointError(f"{source}: model {model_cfg.get('class_path')} is not a classifier; `medconv infer` "
                              "runs medconv.tasks.ClassificationModule checkpoints.")
    init = dict(model_cfg.get("init_args") or {})
    backbone_cfg = init.get("backbone") or {}
    backbone_args = dict(backbone_cfg.get("init_args") or {})
    # the checkpoint brings the weights: no pretrained file, no compile; size and channels were linked from the data
    backbone_args |= {"pretrained_path": None, "compile": False, "img_size": image_size, "in_chans": in_chans}
    backbone = _class(backbone_cfg.get("class_path", "medconv.models.TimmBackbone"))(**backbone_args)
    return model_class(backbone=backbone, num_classes=int(hparams.get("num_classes", init.get("num_classes", 2))),
                       head_dropout=float(init.get("head_dropout") or 0.0), eval_groups=hparams.get("eval_groups"))


def _classes(data_cfg: dict, data_args: dict, n: int) -> list[str]:
    """The run's classes: its config, else what its datamodule decides (demo classes, the manifest's labels)."""
    if data_args.get("classes"):
        return [str(c) for c in data_args["classes"]]
    try:
        dm_class = _class(data_cfg["class_path"])
        kwargs = {k: v for k, v in data_args.items() if k in ("manifest", "classes")}
        classes = [str(c) for c in dm_class(**kwargs).classes]
        if len(classes) == n:
            return classes
    except (MedconvError, OSError, KeyError, TypeError, ValueError):
        pass
    return [f"class_{i}" for i in range(n)]
