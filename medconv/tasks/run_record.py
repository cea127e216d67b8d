"""The run's self-description, written into every checkpoint a task saves (`checkpoint["medconv"]`).

Like timm's `pretrained_cfg`, it carries what using the weights needs besides the weights: the task, the modality,
the classes, input channels and size, normalisation, the preprocessing recipe (mammogram crop/flip, tile size and
target mpp, patch spacing), the model's own config (class_path + init_args, backbone spec included) and, for MIL,
the record of the feature encoder. `medconv.runs.load_run` rebuilds the model from it alone, so a lone `.ckpt`
can be served, embedded with and evaluated without its run folder.
"""

from __future__ import annotations

import copy
from typing import Any

RUN_KEY = "medconv"
FORMAT = 1
#: arguments of a backbone that only matter while training, or that the checkpoint's weights replace (a rebuild
#: never fetches the starting weights again: the backbone's `weights` entry says which they were)
TRAINING_ONLY = ("pretrained", "pretrained_path", "pretrained_key_map", "compile", "grad_checkpointing", "strict_weights",
                 "drop_path_rate")


class RunRecord:
    """Mixin for LightningModules: `on_save_checkpoint` writes the run record.

    `run_config` is the run's resolved `model`/`data` config (plain dicts), set by the CLI before fit; without it
    (a module built in Python) the model spec is taken from the module itself where it can be.
    """

    task: str = "classify"
    run_config: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_KEY] = self.run_record()

    def run_record(self) -> dict[str, Any]:
        data = getattr(getattr(self, "_trainer", None), "datamodule", None)
        config = copy.deepcopy(self.run_config or {})
        model = strip_training_args(config.get("model") or self.model_spec())
        for key in ("backbone", "encoder"):
            with_module_spec(model, key, getattr(self, key, None))
        return {
            "format": FORMAT,
            "task": self.task,
            "model": model,
            "data": data_record(data) if data is not None else {},
            "data_config": plain(config.get("data")),
            "hparams": plain(dict(getattr(self, "hparams", {}))),
        }

    def model_spec(self) -> dict[str, Any]:
        """The model's config when no CLI config is known: its class and its backbone's spec."""
        spec: dict[str, Any] = {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": {}}
        backbone = getattr(self, "backbone", None)
        if backbone is not None and hasattr(backbone, "spec"):
            spec["init_args"]["backbone"] = backbone.spec()
        return spec


def with_module_spec(model: dict[str, Any], key: str, module: Any) -> None:
    """Overlay a module's own `spec()` on its config entry: the architecture it resolved (an `hf-hub:` name becomes
    the timm architecture and the arguments its config.json gave) and `weights`, where its starting weights came from."""
    entry = (model.get("init_args") or {}).get(key)
    spec = module.spec() if callable(getattr(module, "spec", None)) else None
    if not isinstance(entry, dict) or not isinstance(spec, dict):
        return
    if str(entry.get("class_path", "")).rsplit(".", 1)[-1] != str(spec.get("class_path", "")).rsplit(".", 1)[-1]:
        return
    entry["init_args"] = {**(entry.get("init_args") or {}), **plain(spec.get("init_args") or {})}
    if spec.get("weights"):
        entry["weights"] = plain(spec["weights"])


def data_record(data: Any) -> dict[str, Any]:
    """What the data decides and inference must repeat, read from a datamodule (duck-typed: classification, MIL
    and pretraining datamodules, or a pretraining datamodule's `source`)."""
    source = getattr(data, "source", None)
    if source is not None and not hasattr(data, "describe"):
        return {**data_record(source), "wrapped_by": type(data).__name__}
    record: dict[str, Any] = {"class_path": f"{type(data).__module__}.{type(data).__qualname__}"}
    describe = getattr(data, "describe", None)
    if callable(describe):
        record |= describe()
    for name in ("classes", "image_size", "in_chans", "eval_groups", "mean", "std"):
        if name in record:
            continue
        try:
            value = getattr(data, name)
        except Exception:  # noqa: BLE001 -- e.g. classes of an unlabelled folder: not recorded
            continue
        if value is not None:
            record[name] = plain(value)
    return record


def strip_training_args(model: dict[str, Any]) -> dict[str, Any]:
    """The model config without what only training used (a pretrained file, compile, checkpointing)."""
    model = plain(model)
    for key in ("backbone", "encoder"):
        args = ((model.get("init_args") or {}).get(key) or {}).get("init_args")
        if isinstance(args, dict):
            for name in TRAINING_ONLY:
                args.pop(name, None)
    return model


def plain(value: Any) -> Any:
    """JSON-like data only (tuples to lists, Namespaces and mappings to dicts), so `weights_only=True` loads it."""
    if hasattr(value, "as_dict"):  # jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if not str(k).startswith("__")}  # not jsonargparse's __path__
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    for kind in (bool, int, float, str):  # subclasses (jsonargparse's Path is a str) become the plain type
        if isinstance(value, kind):
            return kind(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return str(value)
