"""A MIL run (`medconv fit` of `MILModule` on `MILDataModule`) -> the model plus what inference must repeat.

The aggregator is rebuilt from the run's config.yaml (class_path + init_args), its width and classes from the
checkpoint's hyper-parameters, and the weights (the standardisation buffers included) loaded with
`weights_only=True`. `feature_encoder` is the `medconv embed` record of the encoder the training bags came
from: what embeds new slides the same way (None for bags made by other tools, CLAM/TRIDENT).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from medconv.errors import CheckpointError, ConfigError
from medconv.inference.checkpoint import _class, find_checkpoint, read_checkpoint

MIL_DATA = ("MILDataModule",)
#: MILModule arguments that are objects (rebuilt here or unused in inference), never taken from hparams
OBJECT_ARGS = ("aggregator", "encoder", "criterion", "optimizer", "scheduler")


@dataclass
class LoadedMIL:
    """The MIL model in eval mode, its classes and the record of the encoder its bags came from."""

    module: Any  # medconv.tasks.MILModule
    classes: list[str]
    in_dim: int
    feature_encoder: dict[str, Any] | None
    checkpoint: Path
    config: Path
    data_args: dict
    feature_tiling: dict[str, Any] = field(default_factory=dict)  # tile_size, target_mpp, ... of the training bags

    def fingerprint(self) -> str:
        """Identifies the weights, so outputs of another checkpoint are never taken as done."""
        st = self.checkpoint.stat()
        return f"{self.checkpoint.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def is_mil_run(config_path: Path) -> bool:
    """Whether a run's config trains a MIL model (so `medconv infer` takes the MIL path)."""
    config = yaml.safe_load(Path(config_path).read_text()) or {}
    data_class = str((config.get("data") or {}).get("class_path", "")).rsplit(".", 1)[-1]
    model_class = str((config.get("model") or {}).get("class_path", "")).rsplit(".", 1)[-1]
    return data_class in MIL_DATA or model_class == "MILModule"


def load_mil_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedMIL:
    """Build the run's MILModule, load the checkpoint's weights; refuse end-to-end (tile-bag) runs."""
    from medconv.tasks import MILModule

    ckpt_path, config_path = find_checkpoint(path)
    config = yaml.safe_load(config_path.read_text()) or {}
    model_cfg, data_cfg = config.get("model") or {}, config.get("data") or {}
    data_args = dict(data_cfg.get("init_args") or {})
    init = dict(model_cfg.get("init_args") or {})
    if data_args.get("bag_source") == "tiles" or init.get("encoder"):
        raise ConfigError(f"{config_path}: an end-to-end MIL run (bag_source: tiles, an encoder trained through the bags); "
                          "`medconv infer` runs MIL models on feature bags only for now. Embed the slides with the run's "
                          "encoder yourself, or train on `medconv embed` features (configs/wsi_abmil.yaml).")
    model_class = _class(model_cfg.get("class_path", "medconv.tasks.MILModule"))
    if not issubclass(model_class, MILModule):
        raise CheckpointError(f"{config_path}: model {model_cfg.get('class_path')} is not a medconv.tasks.MILModule.")
    state = read_checkpoint(ckpt_path)
    hparams = dict(state.get("hyper_parameters") or {})
    if not hparams.get("in_dim"):
        raise CheckpointError(f"{ckpt_path}: no in_dim in its hyper-parameters; is it a MIL checkpoint of `medconv fit`?")
    aggregator_cfg = init.get("aggregator") or {}
    if not isinstance(aggregator_cfg, dict) or "class_path" not in aggregator_cfg:
        raise CheckpointError(f"{config_path}: model.init_args.aggregator has no class_path (e.g. medconv.mil.ABMIL).")
    factory = partial(_class(aggregator_cfg["class_path"]), **dict(aggregator_cfg.get("init_args") or {}))
    accepted = set(inspect.signature(model_class.__init__).parameters) - {"self", *OBJECT_ARGS}
    module = model_class(aggregator=factory, **{k: v for k, v in hparams.items() if k in accepted})
    missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt_path}: weights do not fit the model of {config_path} "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]}).")
    module.eval().to(device)
    num_classes = int(hparams.get("num_classes", 2))
    classes = _classes(data_args, num_classes, config_path)
    return LoadedMIL(module, classes, int(hparams["in_dim"]), hparams.get("feature_encoder"), ckpt_path, config_path,
                     data_args, dict(hparams.get("feature_tiling") or {}))


def _classes(data_args: dict, n: int, config_path: Path) -> list[str]:
    """The run's classes: its config, else the training manifest's sorted labels (what `MILDataModule` decides),
    else class_0, class_1, ... (the manifest is gone)."""
    import pandas as pd

    if data_args.get("classes"):
        return [str(c) for c in data_args["classes"]]
    manifest = data_args.get("manifest")
    if not manifest and n == 2:  # trained on the demo bags (medconv.mil.demo)
        from medconv.mil.datamodule import DEMO_CLASSES

        return list(DEMO_CLASSES)
    # relative to where fit ran: try the working directory, then the folder above runs/
    candidates = [Path(manifest), *(parent / manifest for parent in config_path.resolve().parents)] if manifest else []
    for path in candidates:
        if path.is_file():
            try:
                labels = sorted(set(pd.read_csv(path, dtype=str, keep_default_na=False)["label"]))
            except (OSError, KeyError, ValueError):
                break
            if len(labels) == n:
                return labels
            break
    return [f"class_{i}" for i in range(n)]
