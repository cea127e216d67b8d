"""A medconv checkpoint (or run folder) -> the model and everything needed to use it, from the checkpoint alone.

Every task writes a run record into its checkpoints (`checkpoint["medconv"]`, see `medconv.tasks.run_record`): the
model's config (backbone spec included), modality, classes, input size and channels, normalisation, preprocessing
and, for MIL, the feature encoder. `load_run` rebuilds the model from that record, so a `.ckpt` copied anywhere
works for `medconv infer`, `medconv embed` and `medconv test`. Checkpoints written before the record existed still
load through their run's config.yaml (with a deprecation warning). Tensors are read with `weights_only=True`.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from medconv.errors import CheckpointError, ConfigError
from medconv.run_dirs import is_run, resolve_checkpoint
from medconv.tasks.run_record import RUN_KEY, strip_training_args

#: data classes of runs saved before checkpoints carried their record, by modality
LEGACY_MODALITY = {"WSITileDataModule": "wsi", "MammoDataModule": "mammo", "MammoPatchDataModule": "mammo_patch",
                   "MILDataModule": "mil"}
#: task arguments that are objects, rebuilt here from their config or unused for inference
OBJECT_ARGS = ("backbone", "aggregator", "encoder", "objective", "criterion", "optimizer", "scheduler")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Run:
    """A trained model in eval mode and the settings inference must repeat."""

    module: Any  # ClassificationModule | MILModule | the backbone of a PretrainModule
    task: str  # classify | mil | pretrain
    modality: str  # mammo | mammo_patch | wsi | mil
    classes: list[str]
    checkpoint: Path
    record: dict[str, Any]
    config: Path | None = None  # the run's config.yaml, for checkpoints without a record only
    image_size: tuple[int, int] = (224, 224)
    in_chans: int = 3
    preprocessing: dict[str, Any] = field(default_factory=dict)
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def data_args(self) -> dict[str, Any]:
        """The training data's config init_args (manifest, folders): where the training files were, if kept."""
        return dict((self.record.get("data_config") or {}).get("init_args") or {})

    @property
    def mean(self) -> tuple[float, ...]:
        return self.mean_std[0] if self.mean_std else IMAGENET_MEAN

    @property
    def std(self) -> tuple[float, ...]:
        return self.mean_std[1] if self.mean_std else IMAGENET_STD

    @property
    def tile_size(self) -> int | None:
        value = self.preprocessing.get("tile_size")
        return int(value) if value else None

    @property
    def target_mpp(self) -> float | None:
        value = self.preprocessing.get("target_mpp")
        return float(value) if value else None

    @property
    def in_dim(self) -> int:
        return int(self.record.get("hparams", {}).get("in_dim") or 0)

    @property
    def feature_encoder(self) -> dict[str, Any] | None:
        return self.record.get("hparams", {}).get("feature_encoder") or self.preprocessing.get("feature_encoder")

    @property
    def feature_tiling(self) -> dict[str, Any]:
        return dict(self.record.get("hparams", {}).get("feature_tiling") or self.preprocessing.get("feature_tiling") or {})

    def fingerprint(self) -> str:
        """Identifies the weights, so outputs of another checkpoint are never taken as done."""
        st = self.checkpoint.stat()
        return f"{self.checkpoint.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint a .ckpt path or a run folder (its best checkpoint) names."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint not found; pass a .ckpt file or a run directory.")
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
    return ckpt


def read_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    """A checkpoint's tensors and records, with `weights_only=True` (pickled code is refused, not run)."""
    try:
        return torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # not a refused class: a corrupt or foreign file
            raise CheckpointError(f"{ckpt_path}: unreadable checkpoint ({err}); is it a .ckpt `medconv fit` wrote?") from err
        raise CheckpointError(f"{ckpt_path}: holds Python objects other than weights, so medconv does not load it.") from err
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{ckpt_path}: unreadable checkpoint ({err}); is it truncated?") from err


def run_record(path: str | Path) -> dict[str, Any]:
    """The run record of a checkpoint or run folder (the legacy equivalent for checkpoints without one)."""
    ckpt = find_checkpoint(path)
    record, _ = _record(ckpt, read_checkpoint(ckpt))
    return record


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of a checkpoint (or a run folder's best checkpoint) and load its weights."""
    ckpt = find_checkpoint(path)
    state = read_checkpoint(ckpt)
    record, config = _record(ckpt, state)
    data = record.get("data") or {}
    image_size = tuple(int(v) for v in data.get("image_size") or (224, 224))
    in_chans = int(data.get("in_chans") or 3)
    module = _build(record, image_size, in_chans, ckpt)
    weights = state.get("state_dict") or {}
    if record["task"] == "pretrain":  # the encoder being pretrained is what a pretraining checkpoint serves
        weights = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt}: weights do not fit the model its record describes "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]}).")
    module.eval().to(device)
    n = int((record.get("hparams") or {}).get("num_classes") or 2)
    classes = [str(c) for c in data.get("classes") or []]
    if len(classes) != n:
        classes = [f"class_{i}" for i in range(n)]
    preprocessing = dict(data.get("preprocessing") or {})
    mean, std = preprocessing.get("mean") or data.get("mean"), preprocessing.get("std") or data.get("std")
    mean_std = (tuple(float(v) for v in mean), tuple(float(v) for v in std)) if mean and std else None
    return Run(module, record["task"], str(data.get("modality") or ""), classes, ckpt, record, config, image_size,
               in_chans, preprocessing, mean_std)


def _class(path: str) -> type:
    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"class {path!r} named by the checkpoint's record does not exist in this medconv "
                              "(see docs/migration.md for moved classes).") from err


def _build(record: dict[str, Any], image_size: tuple[int, int], in_chans: int, ckpt: Path) -> Any:
    import medconv.models  # noqa: F401  (registers GResNet with timm)

    model = record.get("model") or {}
    init = dict(model.get("init_args") or {})
    backbone = _part(init.get("backbone"), image_size, in_chans)
    if record["task"] == "pretrain":
        if backbone is None:
            raise CheckpointError(f"{ckpt}: its record names no backbone to rebuild.")
        return backbone
    model_class = _class(model.get("class_path") or "medconv.tasks.ClassificationModule")
    accepted = set(inspect.signature(model_class.__init__).parameters) - {"self", *OBJECT_ARGS}
    hparams = {k: v for k, v in (record.get("hparams") or {}).items() if k in accepted}
    objects: dict[str, Any] = {}
    if backbone is not None:
        objects["backbone"] = backbone
    if record["task"] == "mil":
        aggregator = init.get("aggregator") or {}
        if not isinstance(aggregator, dict) or "class_path" not in aggregator:
            raise CheckpointError(f"{ckpt}: the MIL model's aggregator has no class_path in its record.")
        objects["aggregator"] = partial(_class(aggregator["class_path"]), **dict(aggregator.get("init_args") or {}))
        if init.get("encoder"):
            objects["encoder"] = _part(init["encoder"], image_size, in_chans)
    try:
        return model_class(**objects, **hparams)
    except (TypeError, ConfigError) as err:
        raise CheckpointError(f"{ckpt}: cannot rebuild {model.get('class_path')} from its record ({err}).") from err


def _part(spec: Any, image_size: tuple[int, int], in_chans: int) -> Any:
    """A backbone/encoder from class_path + init_args, built for the data's size and channels."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        return None
    args = dict(spec.get("init_args") or {})
    args |= {"img_size": image_size, "in_chans": in_chans}
    return _class(spec["class_path"])(**args)


def _record(ckpt: Path, state: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    record = state.get(RUN_KEY)
    if isinstance(record, dict) and record.get("model"):
        return record, None
    return _legacy_record(ckpt, state)


def _legacy_record(ckpt: Path, state: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The record of a checkpoint saved before checkpoints carried one, from its run's config.yaml."""
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{ckpt}: written by an earlier medconv, it has no run record, and there is no "
                              f"config.yaml in its run folder {run} to rebuild the model from. Keep it inside "
                              "runs/<name>/version_N/checkpoints/, or retrain with this version.")
    warnings.warn(f"{ckpt}: has no run record (written by an earlier medconv); rebuilding it from {config_path}, which "
                  "breaks if the run folder moves. Checkpoints written from now on carry their record.",
                  FutureWarning, stacklevel=3)
    config = yaml.safe_load(config_path.read_text()) or {}
    model, data_cfg = config.get("model") or {}, config.get("data") or {}
    data_args = dict(data_cfg.get("init_args") or {})
    modality = LEGACY_MODALITY.get(str(data_cfg.get("class_path", "")).rsplit(".", 1)[-1], "")
    task = {"MILModule": "mil", "PretrainModule": "pretrain"}.get(str(model.get("class_path", "")).rsplit(".", 1)[-1],
                                                                    "mil" if modality == "mil" else "classify")
    hparams = dict(state.get("hyper_parameters") or {})
    classes = data_args.get("classes") or _legacy_classes(data_cfg, int(hparams.get("num_classes") or 2))
    preprocessing = {k: data_args[k] for k in ("tile_size", "target_mpp", "mean", "std") if data_args.get(k)}
    if modality == "wsi":
        preprocessing = {"tile_size": 224, "target_mpp": 0.5} | preprocessing
    data = {"modality": modality, "classes": classes, "image_size": data_args.get("image_size") or [224, 224],
            "in_chans": data_args.get("in_chans") or (1 if modality.startswith("mammo") else 3),
            "preprocessing": preprocessing, "eval_groups": hparams.get("eval_groups")}
    record = {"format": 0, "task": task, "model": strip_training_args(model), "data": data, "data_config": data_cfg,
              "hparams": hparams}
    return record, config_path


def _legacy_classes(data_cfg: dict[str, Any], n: int) -> list[str]:
    """What the run's datamodule decides (the demo classes, the manifest's labels), when it still can."""
    try:
        kwargs = {k: v for k, v in (data_cfg.get("init_args") or {}).items() if k in ("manifest", "classes")}
        classes = [str(c) for c in _class(data_cfg["class_path"])(**kwargs).classes]
    except Exception:  # noqa: BLE001 -- the manifest moved, or another version's class: numbered classes instead
        return []
    return classes if len(classes) == n else []
