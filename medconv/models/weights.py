"""Pretrained weights into a timm backbone: adapt them to this model's size and channels, report every mismatch.

Every source goes through `load_state`: local files (`load_local_weights`) and the weights timm fetches for a
tag or `hf-hub:` name (`medconv.models.hub`), so both follow one rule and give one report. Local files may be
timm/torch `.pth`/`.pt`/`.bin`/`.ckpt` state dicts, `.safetensors`, Lightning checkpoints of our tasks
(`backbone.model.` prefix) and SSL exports (any common prefix): the prefix that matches most of the model's keys
is stripped; a file in another library's layout is renamed first by a key map (`medconv.models.key_maps`). The family's own timm `checkpoint_filter_fn` then resizes
what timm knows how to resize (ViT position embeddings, Swin relative-position tables, patch embeddings);
absolute position embeddings it leaves alone (Hiera) are resampled here. Input convs of RGB weights are
adapted to the model's `in_chans` with timm's `adapt_input_conv` (summed for 1 channel, repeated and rescaled
for more), so a grey image gives what the RGB model gives on it repeated over three channels.

timm's own path for a file (`create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...))`) is not used:
it strips only `module.`, so a Lightning checkpoint loads nothing with just a log line; it raises on shapes its
filter leaves alone (Hiera's pos_embed, GResNet's input-norm statistics); and it keeps no record to report.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medconv.errors import ConfigError, InputFileError
from medconv.models.key_maps import KeyMap, rename_keys

log = logging.getLogger(__name__)


@dataclass
class WeightReport:
    """What a load did: kept a user-visible record rather than a silent `strict=False`."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file shape -> model shape"
    resized: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # input convs (and their input norm) for another in_chans
    classifier_dropped: list[str] = field(default_factory=list)
    outside_prefix: list[str] = field(default_factory=list)  # e.g. a task's head in a Lightning checkpoint
    prefix: str = ""
    renamed: int = 0  # keys renamed by the key map
    key_map: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        def names(keys: list[str]) -> str:
            more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"{self.path}: loaded {len(self.loaded)} tensors"]
        if self.key_map:
            parts.append(f"renamed {self.renamed} keys by the key map {self.key_map}")
        if self.prefix:
            parts.append(f"stripped prefix {self.prefix!r}")
        if self.outside_prefix:
            parts.append(f"ignored {len(self.outside_prefix)} keys outside it [{names(self.outside_prefix)}]")
        if self.adapted:
            parts.append(f"adapted {len(self.adapted)} to the input channels [{names(self.adapted)}]")
        if self.resized:
            parts.append(f"resized {len(self.resized)} [{names(self.resized)}]")
        if self.classifier_dropped:
            parts.append(f"dropped {len(self.classifier_dropped)} classifier keys")
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("shape mismatch", self.mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} keys [{names(keys)}]")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a local weights file (weights_only for torch pickles)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: pretrained weights not found; pass a local file to pretrained_path.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or unsupported file: name it, keep the cause
        raise InputFileError(f"{path}: cannot read weights ({type(err).__name__}: {err}).") from err
    for key in ("state_dict", "model", "model_state", "backbone", "teacher", "student"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise InputFileError(f"{path}: expected a state dict, found {type(state).__name__}.")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _best_prefix(keys: list[str], model_keys: set[str]) -> str:
    """The leading `a.b.` prefix whose removal matches most model keys ('' if none does better)."""
    candidates = {""}
    for key in keys:
        parts = key.split(".")
        candidates.update(".".join(parts[:i]) + "." for i in range(1, min(4, len(parts))))
    def score(prefix: str) -> int:
        return sum(1 for k in keys if k.startswith(prefix) and k[len(prefix):] in model_keys)
    return max(sorted(candidates, key=len), key=score)


def _timm_filter(model: nn.Module):
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _resize_pos_embed(key: str, value: torch.Tensor, target: torch.Tensor, model: nn.Module) -> torch.Tensor | None:
    """Resample an absolute (1, N, C) position embedding to the model's token grid, if we know it."""
    from timm.layers import resample_abs_pos_embed

    if not key.endswith("pos_embed") or value.ndim != 3 or target.ndim != 3 or value.shape[-1] != target.shape[-1]:
        return None
    grid = getattr(model, "tokens_spatial_shape", None)  # Hiera
    if grid is None and hasattr(model, "patch_embed") and hasattr(model.patch_embed, "grid_size"):
        grid = model.patch_embed.grid_size
    if grid is None:
        return None
    prefix = target.shape[1] - grid[0] * grid[1]
    old_tokens = value.shape[1] - prefix
    side = int(round(old_tokens**0.5))
    if prefix < 0 or side * side != old_tokens:
        return None
    return resample_abs_pos_embed(value, new_size=list(grid), old_size=[side, side], num_prefix_tokens=prefix)


def _input_conv_keys(model: nn.Module, target: dict[str, torch.Tensor]) -> list[str]:
    """The model's input conv weights: timm's `first_conv` (as `load_pretrained` finds it), else the first 4-D one."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if names:
        return [f"{name}.weight" for name in ([names] if isinstance(names, str) else names)]
    return [next((k for k, v in target.items() if v.ndim == 4), "")]


def _adapt_input_convs(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Input convs whose weights differ only in input channels, adapted as timm does; returns what was done."""
    from timm.models import adapt_input_conv

    done = []
    for key in _input_conv_keys(model, target):
        weight, want = state.get(key), target.get(key)
        if weight is None or want is None or weight.ndim != 4 or weight.shape == want.shape:
            continue
        if weight.shape[0] != want.shape[0] or weight.shape[2:] != want.shape[2:]:
            continue  # another width or kernel, not another input: left to be reported as a mismatch
        base, in_chans = weight.shape[1], want.shape[1]
        owner = key.removesuffix(".weight").rpartition(".")[0]
        # A stem that normalises its own input (GResNet's split norm) adapts its statistics with the weights.
        adapt_norm = getattr(model.get_submodule(owner), "adapt_input_state", None) if owner else None
        norm = adapt_norm(state, owner, in_chans) if adapt_norm is not None else []
        state[key] = adapt_input_conv(in_chans, state[key], base_chans=base)
        how = f"summed over {'RGB' if base == 3 else f'{base} channels'}" if in_chans == 1 else "repeated and rescaled"
        done += [f"{key}: {tuple(weight.shape)} -> {tuple(want.shape)} {how}", *norm]
    return done


def load_local_weights(model: nn.Module, path: str | Path, strict: bool = False, key_map: KeyMap | None = None) -> WeightReport:
    """Load `path` into the timm `model`, adapting sizes; warn on any mismatch, raise if `strict`.

    `key_map` renames the file's keys first: a built-in map's name or {regex: replacement} (medconv.models.key_maps).
    """
    state = read_state_dict(path)
    renamed, label = 0, ""
    if key_map:
        state, renamed, label = rename_keys(state, key_map, model)
    return load_state(model, state, WeightReport(path=str(path), renamed=renamed, key_map=label), strict)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], report: WeightReport, strict: bool = False) -> WeightReport:
    """Load `state` into `model`: strip a prefix, resize, adapt input channels; fill `report` with what was done."""
    target = model.state_dict()
    report.prefix = _best_prefix(list(state), set(target))
    if report.prefix:
        report.outside_prefix = [k for k in state if not k.startswith(report.prefix)]
        state = {k[len(report.prefix):]: v for k, v in state.items() if k.startswith(report.prefix)}

    filter_fn = _timm_filter(model)
    if filter_fn is not None:
        before = {k: tuple(v.shape) for k, v in state.items()}
        state = filter_fn(state, model)
        report.resized += [k for k, v in state.items() if k in before and tuple(v.shape) != before[k]]
    report.adapted = _adapt_input_convs(state, target, model)  # after the filter, which may rename the stem

    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in target:
            if any(key.startswith(c + ".") for c in classifiers) and getattr(model, "num_classes", 1) == 0:
                report.classifier_dropped.append(key)
            else:
                report.unexpected.append(key)
            continue
        if value.shape != target[key].shape:
            resized = _resize_pos_embed(key, value, target[key], model)
            if resized is None or resized.shape != target[key].shape:
                report.mismatched.append(f"{key}: {tuple(value.shape)} -> {tuple(target[key].shape)}")
                continue
            report.resized.append(key)
            value = resized
        kept[key] = value
    result = model.load_state_dict(kept, strict=False)
    report.missing = list(result.missing_keys)
    report.loaded = list(kept)

    if report.ok:
        log.info(report.summary())
    elif strict:
        raise ConfigError(f"weights do not match the model: {report.summary()}")
    else:
        warnings.warn(f"weights do not match the model: {report.summary()}", stacklevel=2)
        log.warning(report.summary())
    return report
