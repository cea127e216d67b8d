"""ENCODER -> a frozen backbone that maps normalised tiles to pooled features, and the record to rebuild it.

Four kinds, told apart by what the spec names:
- a registry name (`uni`, `virchow2`, `encoder:h-optimus-0`; `medconv.models.encoder_registry`): a pathology
  foundation model from its Hugging Face repo through timm (or transformers), with its own feature recipe,
  normalisation, input size and mpp; the record names the entry, the hub commit and the weights' sha256;
- a timm model name, with a local weights file (`weights`) or random weights (a baseline only; seeded, so every
  process and every rebuild gets the same ones);
- an SSL export: a run directory or `encoder.safetensors` with its `encoder.json` (`medconv fit` of a pretraining
  task writes both); the json says the timm name, channels, size, model_args and the data it saw;
- a medconv classification checkpoint or run directory: its backbone, with the run's mean/std, tile size and mpp.

`Encoder.info` is JSON: stored with every feature file, it is enough for `encoder_from_info` to rebuild the same
encoder (weights checked by sha256), so a MIL model trained on the features can embed new slides the same way.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medconv.errors import CheckpointError, ConfigError, InputFileError
from medconv.models.encoder_registry import EncoderEntry, encoder_entry, is_encoder_name
from medconv.run_dirs import is_run
from medconv.tiling.feature_store import encoder_fingerprint

EXPORT_WEIGHTS = "encoder.safetensors"  # as medconv.callbacks.encoder_export writes them
EXPORT_META = "encoder.json"
RANDOM_SEED = 0
RANDOM_WARNING = ("{name}: no --weights, so the encoder has random weights; features from random weights are only a "
                  "baseline (what the architecture gives untrained). Pass a local weights file with --weights, an SSL "
                  "export or a medconv run to embed with learned features.")


@dataclass
class Encoder:
    """A backbone in eval mode: normalised float images (B, C, H, W) -> features (B, dim)."""

    module: nn.Module
    dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    img_size: tuple[int, int] | None  # the input size it is built for; None: any size
    tile_size: int | None  # what the encoder was trained on, when known (None otherwise)
    target_mpp: float | None
    info: dict[str, Any]

    def fingerprint(self) -> str:
        """Identifies the encoder's computation (architecture, weights' sha256, normalisation), not where files lie."""
        return encoder_fingerprint(self.info)

    def set_img_size(self, img_size: tuple[int, int]) -> None:
        """Take another input size: models that fix it (ViT, Swin) are resized as timm does; others take any size."""
        img_size = tuple(int(s) for s in img_size)
        if self.img_size is not None and tuple(self.img_size) == img_size:
            return
        model = getattr(self.module, "model", self.module)
        if hasattr(model, "set_input_size"):
            self.module.set_input_size(img_size)
        self.img_size = img_size
        self.info["img_size"] = list(img_size)


def load_encoder(spec: str, weights: str | None = None, img_size: tuple[int, int] | None = None) -> Encoder:
    """The encoder an ENCODER argument names (see the module docstring); `weights` only with a timm name.

    `img_size`: build for this input size (timm names and SSL exports; weights are resized as timm does).
    """
    path = Path(spec).expanduser()
    if path.is_dir() and (path / EXPORT_WEIGHTS).is_file():
        kind, source = "ssl", path / EXPORT_WEIGHTS
    elif path.is_file() and path.name in (EXPORT_WEIGHTS, EXPORT_META) or path.suffix == ".safetensors":
        kind, source = "ssl", path if path.suffix == ".safetensors" else path.parent / EXPORT_WEIGHTS
    elif path.suffix == ".ckpt" or path.is_dir() and is_run(path):
        kind, source = "checkpoint", path
    elif is_encoder_name(spec):
        kind, source = "registry", None
    elif path.exists():
        raise InputFileError(f"{path}: not an encoder; pass a timm model name (with --weights FILE), an SSL export "
                             f"({EXPORT_WEIGHTS} with its {EXPORT_META}, or their run folder), or a medconv .ckpt / run folder.")
    else:
        kind, source = "timm", None
    if weights is not None and kind != "timm":
        raise ConfigError(f"--weights {weights}: only for a timm model name; {spec} already brings its weights.")
    if kind == "registry":
        return _registry(encoder_entry(spec), img_size)
    if kind == "ssl":
        return _ssl_export(source, img_size)
    if kind == "checkpoint":
        return _checkpoint(source, img_size)
    return _timm(spec, weights, img_size)


def encoder_from_info(info: dict[str, Any]) -> Encoder:
    """Rebuild the encoder a feature file's `encoder` attribute describes; its weight files must be unchanged."""
    kind = info.get("kind")
    if kind == "checkpoint":
        _check_sha(info["checkpoint"], info.get("checkpoint_sha256"))
        encoder = _checkpoint(Path(info["checkpoint"]), None)
    elif kind == "registry":
        encoder = _registry(EncoderEntry.from_record(info), None, info.get("revision"))
        if info.get("weights_sha256") and encoder.info["weights_sha256"] != info["weights_sha256"]:
            raise InputFileError(f"{info['hub_id']}: the cached weights ({encoder.info['weights']}) are not the ones the "
                                 f"features were made with (sha256 {info['weights_sha256'][:12]}...); restore that "
                                 "revision or re-embed.")
    elif kind in ("timm", "ssl"):
        weights = info.get("weights")
        if weights:
            _check_sha(weights, info.get("weights_sha256"))
        module = _backbone(info["name"], int(info["in_chans"]), _size(info.get("build_img_size")), weights,
                           info.get("model_args") or {}, seeded=not weights)
        encoder = Encoder(module, int(info["num_features"]), tuple(info["mean"]), tuple(info["std"]), int(info["in_chans"]),
                          _size(info.get("build_img_size")), info.get("tile_size"), info.get("target_mpp"), dict(info))
    else:
        raise ConfigError(f"encoder record of kind {kind!r}: expected registry, timm, ssl or checkpoint (a medconv feature file's "
                          "`encoder` attribute).")
    encoder.mean, encoder.std = tuple(info["mean"]), tuple(info["std"])
    if info.get("img_size"):
        encoder.set_img_size(_size(info["img_size"]))
    encoder.info = dict(info)
    return encoder


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(path: str | Path, expected: str | None) -> None:
    if not Path(path).is_file():
        raise InputFileError(f"{path}: the encoder's weights are gone; restore the file or re-embed with another encoder.")
    if expected and sha256(path) != expected:
        raise InputFileError(f"{path}: its sha256 is not the one the features were made with ({expected[:12]}...); "
                             "the weights changed, so new features would not match the old ones.")


def _size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def _backbone(name: str, in_chans: int, img_size: tuple[int, int] | None, weights: str | None, model_args: dict,
              seeded: bool) -> nn.Module:
    import medconv.models  # noqa: F401  (registers GResNet with timm)
    from medconv.models import TimmBackbone

    with torch.random.fork_rng(devices=[]):
        if seeded:  # random weights: the same in every process and every rebuild
            torch.manual_seed(RANDOM_SEED)
        module = TimmBackbone(name, in_chans=in_chans, img_size=img_size, pretrained_path=weights, strict_weights=True,
                              model_args=model_args)
    return module.eval().requires_grad_(False)


def _dim(module: nn.Module) -> int:
    """The feature width the encoder returns: a TimmBackbone knows it (its recipe's dim, or the pooled width that
    timm's head receives); a bare timm model says it through head_hidden_size / num_features."""
    from medconv.models import TimmBackbone

    if isinstance(module, TimmBackbone):
        return int(module.num_features)
    return int(getattr(module, "head_hidden_size", None) or module.num_features)


def _timm(name: str, weights: str | None, img_size: tuple[int, int] | None) -> Encoder:
    import timm

    import medconv.models  # noqa: F401

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        raise ConfigError(f"ENCODER {name!r}: no such file or folder, and not a timm model name"
                          + (f" (similar: {', '.join(close)})" if close else "")
                          + "; pass a timm name, an SSL export or a medconv run.")
    if weights is not None and not Path(weights).is_file():
        raise InputFileError(f"--weights {weights}: file not found; pass a local .safetensors/.pth/.ckpt (no downloads).")
    if weights is None:
        warnings.warn(RANDOM_WARNING.format(name=name), UserWarning, stacklevel=3)
    module = _backbone(name, 3, img_size, weights, {}, seeded=weights is None)
    cfg = getattr(module.model, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean") or _imagenet()[0]), tuple(cfg.get("std") or _imagenet()[1])
    info = {"kind": "timm", "name": name, "in_chans": 3, "img_size": list(img_size) if img_size else None,
            "build_img_size": list(img_size) if img_size else None, "model_args": {}, "num_features": _dim(module),
            "weights": str(Path(weights).resolve()) if weights else None,
            "weights_sha256": sha256(weights) if weights else None, "random_seed": None if weights else RANDOM_SEED,
            "mean": list(mean), "std": list(std), "tile_size": None, "target_mpp": None}
    return Encoder(module, info["num_features"], mean, std, 3, img_size, None, None, info)


def _registry(entry: EncoderEntry, img_size: tuple[int, int] | None, revision: str | None = None) -> Encoder:
    """A registry entry with its hub weights (see `medconv.models.encoder_build`), its recipe and data settings."""
    from medconv.models.encoder_build import build_encoder_model, cached_weights
    from medconv.models.hub import sha256 as file_sha256  # a cache blob's name is its sha256: not re-read

    module = build_encoder_model(entry, pretrained=True, revision=revision).requires_grad_(False)
    found = cached_weights(entry, revision)
    weights, commit = found if found else (None, revision)
    build = (entry.input_size, entry.input_size)
    info = {"kind": "registry", **entry.record(), "revision": commit, "in_chans": 3, "img_size": list(build),
            "build_img_size": list(build), "num_features": entry.feature_dim,
            "weights": str(weights) if weights else None,
            # the file timm or transformers loaded, else (a cache it does not name) the tensors it loaded
            "weights_sha256": file_sha256(weights) if weights else _state_sha256(module), "tile_size": entry.tile,
            "target_mpp": entry.mpp}
    encoder = Encoder(module, entry.feature_dim, tuple(entry.mean), tuple(entry.std), 3, build, entry.tile, entry.mpp,
                      info)
    if img_size is not None:
        encoder.set_img_size(img_size)
    return encoder


def _state_sha256(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _ssl_export(weights: Path, img_size: tuple[int, int] | None) -> Encoder:
    meta_path = weights.parent / EXPORT_META
    if not weights.is_file():
        raise InputFileError(f"{weights}: encoder weights not found; an SSL export has {EXPORT_WEIGHTS} and {EXPORT_META}.")
    if not meta_path.is_file():
        raise InputFileError(f"{weights}: no {EXPORT_META} beside it to say which model it is; keep the two files of the "
                             "export together, or pass a timm name with --weights.")
    try:
        meta = json.loads(meta_path.read_text())
        name, in_chans = str(meta["timm_name"]), int(meta.get("in_chans") or 3)
    except (ValueError, KeyError, TypeError) as err:
        raise InputFileError(f"{meta_path}: unreadable encoder description ({err}); re-export the encoder.") from err
    data = meta.get("data") or {}
    build = img_size or _size(meta.get("img_size"))
    module = _backbone(name, in_chans, build, str(weights), meta.get("model_args") or {}, seeded=False)
    mean, std = _data_value(data, "mean"), _data_value(data, "std")
    if mean is None or std is None:
        mean, std = _imagenet() if in_chans == 3 else ((0.5,) * in_chans, (0.5,) * in_chans)
    tile_size, target_mpp = _data_value(data, "tile_size"), _data_value(data, "target_mpp")
    info = {"kind": "ssl", "name": name, "in_chans": in_chans, "img_size": list(build) if build else None,
            "build_img_size": list(build) if build else None, "model_args": meta.get("model_args") or {},
            "num_features": _dim(module), "weights": str(weights.resolve()), "weights_sha256": sha256(weights),
            "export": str(meta_path.resolve()), "method": meta.get("method"), "mean": list(mean), "std": list(std),
            "tile_size": int(tile_size) if tile_size else None, "target_mpp": float(target_mpp) if target_mpp else None}
    return Encoder(module, info["num_features"], tuple(mean), tuple(std), in_chans, build, info["tile_size"],
                   info["target_mpp"], info)


def _data_value(data: dict, key: str) -> Any:
    """A setting of the pretraining data, or of the data it wraps (`source`)."""
    if data.get(key) is not None:
        return data[key]
    source = data.get("source")
    return _data_value(source, key) if isinstance(source, dict) else None


def _checkpoint(path: Path, img_size: tuple[int, int] | None) -> Encoder:
    """The backbone of a medconv classification or pretraining checkpoint, with its run's data settings."""
    from medconv.runs import load_run

    loaded = load_run(path)
    if loaded.task == "mil":
        raise CheckpointError(f"{loaded.checkpoint}: a MIL checkpoint aggregates features, it does not embed tiles; pass "
                              "the encoder its bags came from, a classification run or a pretraining run.")
    backbone = loaded.module if loaded.task == "pretrain" else loaded.module.backbone
    backbone = backbone.eval().requires_grad_(False)
    size = tuple(loaded.image_size)
    mean, std = loaded.mean_std or (_imagenet() if loaded.in_chans == 3 else ((0.5,) * loaded.in_chans,) * 2)
    info = {"kind": "checkpoint", "task": loaded.task, "name": backbone.name, "in_chans": loaded.in_chans,
            "img_size": list(size), "build_img_size": list(size), "model_args": dict(backbone.model_args),
            "num_features": _dim(backbone), "checkpoint": str(loaded.checkpoint.resolve()),
            "checkpoint_sha256": sha256(loaded.checkpoint), "mean": list(mean), "std": list(std),
            "tile_size": loaded.tile_size, "target_mpp": loaded.target_mpp}
    encoder = Encoder(backbone, info["num_features"], tuple(mean), tuple(std), loaded.in_chans, size,
                      loaded.tile_size, loaded.target_mpp, info)
    if img_size is not None:
        encoder.set_img_size(img_size)
    return encoder


def _imagenet() -> tuple[tuple[float, ...], tuple[float, ...]]:
    from medconv.wsi.transforms import IMAGENET_MEAN, IMAGENET_STD

    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
