"""`config.json` + `model.safetensors` as timm publishes a model, with the run's input recipe as its pretrained_cfg.

timm writes both files (`timm.models.save_for_hf`: architecture, num_classes, num_features, model_args, the
state dict); this module replaces what timm copied from the architecture's default ImageNet cfg (its hub id, tag,
paper, test size) with what the run decided: input size and channels, mean/std, crop_pct 1.0, the class names
(`label_names`). timm rejects unknown keys inside `pretrained_cfg`, so medconv's own recipe (modality, preprocessing
steps, tile geometry, backbone spec, source checkpoint) sits beside it under the top-level key `medconv`, which
timm ignores and `medconv` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm.models
from torch import nn

from medconv import __version__
from medconv.runs import Run

EXPORT_FORMAT = 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"
#: medconv resizes with area averaging when shrinking and bilinear when enlarging; bilinear is timm's nearest choice
INTERPOLATION = "bilinear"
#: pretrained_cfg keys that describe the architecture's published ImageNet weights, not these weights
NOT_OURS = ("tag", "hf_hub_id", "hf_hub_filename", "url", "file", "source", "origin_url", "paper_ids", "paper_name",
            "notes", "description", "test_input_size", "test_crop_pct", "test_pool_size", "min_input_size",
            "label_offset", "label_descriptions")


def pretrained_cfg(run: Run, num_classes: int, license_: str) -> dict[str, Any]:
    """The run's input recipe in timm's pretrained_cfg terms (what `timm.data.resolve_data_config` returns); the
    class names go at the config's top level (`label_names`), where timm puts them."""
    height, width = run.image_size
    return {
        "input_size": [run.in_chans, height, width], "mean": list(run.mean), "std": list(run.std), "crop_pct": 1.0,
        "crop_mode": "center", "interpolation": INTERPOLATION, "num_classes": num_classes, "license": license_,
        "description": description(run), "notes": notes(run),
    }


def description(run: Run) -> str:
    what = {"mammo": "whole mammograms", "mammo_patch": "mammogram patches", "wsi": "whole-slide image tiles"}
    data = what.get(run.modality, run.modality or "images")
    if run.task == "pretrain":
        return f"Encoder self-supervised on {data} with medconv (no classifier)."
    return f"Classifier of {data} ({', '.join(run.classes)}) trained with medconv."


def notes(run: Run) -> list[str]:
    """The preprocessing a user must repeat, one line per step of the run's recipe."""
    skip = ("mean", "std", "image_size", "feature_encoder", "feature_tiling")
    lines = [f"{key}: {readable(value)}" for key, value in run.preprocessing.items() if key not in skip]
    return lines or ["resize to input_size, then (x - mean) / std"]


def medconv_section(run: Run, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What medconv knows beyond timm's config: the recipe, the model spec and the checkpoint the weights came from."""
    return {
        "format": EXPORT_FORMAT, "medconv_version": __version__, "task": run.task, "modality": run.modality,
        "classes": list(run.classes), "image_size": list(run.image_size), "in_chans": run.in_chans,
        "preprocessing": run.preprocessing, "model": run.record.get("model") or {}, "checkpoint": checkpoint,
    }


def write_timm_files(model: nn.Module, folder: Path, run: Run, checkpoint: dict[str, Any], license_: str) -> dict[str, Any]:
    """Write `model.safetensors` and `config.json` into `folder`; returns the config."""
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    path = Path(folder) / CONFIG
    config = json.loads(path.read_text())
    cfg = {k: v for k, v in config.get("pretrained_cfg", {}).items() if k not in NOT_OURS}
    ours = pretrained_cfg(run, int(model.num_classes), license_)
    if list(cfg.get("input_size", [])[1:]) != ours["input_size"][1:]:
        cfg["pool_size"] = None  # timm's value is for the architecture's default input size
    config["pretrained_cfg"] = cfg | ours
    config["num_classes"] = int(model.num_classes)
    if run.task == "classify":
        config["label_names"] = list(run.classes)
    else:
        config.pop("label_names", None)
    config["medconv"] = medconv_section(run, checkpoint)
    path.write_text(json.dumps(config, indent=2, default=str) + "\n")
    return config


def readable(value: Any) -> str:
    """Lists as `a, b`, the rest as str: recipe values read in a card and in config notes."""
    return ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
