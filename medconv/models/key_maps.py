"""Key maps: weights files saved by another library, renamed to timm's keys before they are loaded.

`pretrained_key_map` of a backbone is either the name of a built-in map or a mapping {regex: replacement}, applied
to each key as Hugging Face transformers applies its `key_mapping`: the first pattern that matches renames the key
with `re.sub` (`\\1` groups allowed); a replacement of null drops the key. A key no pattern matches is kept as it is.
Built-in maps are functions of the key and the target model, for layouts that regexes cannot express (a flat
block index that timm splits into stages):

- `efficientnet_pytorch`: lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_blocks.N._expand_conv`, `_fc`) to timm's
  EfficientNet (`conv_stem`, `blocks.S.I.conv_pw`, `classifier`); efficientnet_b0..b7 and EfficientNet-Lite files.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from medconv.errors import ConfigError

KeyMap = str | dict[str, str | None]

# lukemelas names -> timm names; a block with an expansion conv is timm's InvertedResidual, one without it a
# DepthwiseSeparableConv, whose convs and norms are numbered differently.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
              "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def efficientnet_pytorch(model: nn.Module) -> Callable[[str], str | None]:
    """The lukemelas EfficientNet-PyTorch layout to timm's `EfficientNet` (flat block index -> stage, index)."""
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential) or not all(isinstance(s, nn.Sequential) for s in stages):
        raise ConfigError(f"key map efficientnet_pytorch fits timm EfficientNet models (efficientnet_*, "
                          f"tf_efficientnet_*), not {type(model).__name__}.")
    blocks = [(s, i, type(block).__name__) for s, stage in enumerate(stages) for i, block in enumerate(stage)]

    def rename(key: str) -> str | None:
        match = _BLOCK.match(key)
        if match is None:
            head, _, rest = key.partition(".")
            return f"{_TOP[head]}.{rest}" if head in _TOP else None
        n, part, rest = int(match[1]), match[2], match[3]
        if n >= len(blocks):
            return None
        stage, index, kind = blocks[n]
        names = _SEPARABLE if kind == "DepthwiseSeparableConv" else _INVERTED
        return f"blocks.{stage}.{index}.{names[part]}.{rest}" if part in names else None

    return rename


BUILT_IN: dict[str, Callable[[nn.Module], Callable[[str], str | None]]] = {"efficientnet_pytorch": efficientnet_pytorch}


def _regex(mapping: dict[str, str | None]) -> Callable[[str], str | None]:
    try:
        rules = [(re.compile(pattern), replacement) for pattern, replacement in mapping.items()]
    except re.error as err:
        raise ConfigError(f"pretrained_key_map: {err.pattern!r} is not a regular expression ({err})") from err

    def rename(key: str) -> str | None:
        for pattern, replacement in rules:
            if pattern.search(key):
                return None if replacement is None else pattern.sub(replacement, key)
        return key

    return rename


def rename_keys(state: dict[str, torch.Tensor], key_map: KeyMap, model: nn.Module) -> tuple[dict[str, torch.Tensor], int, str]:
    """(renamed state, how many keys changed, the map's label). A built-in map keeps keys it does not know as they
    are, so the load reports them as unexpected; two keys mapped to one name is an error."""
    if isinstance(key_map, str):
        if key_map not in BUILT_IN:
            raise ConfigError(f"pretrained_key_map {key_map!r}: no such built-in map; built-in: {sorted(BUILT_IN)}, or give "
                              "a mapping {regex: replacement}.")
        rename, label, dropping = BUILT_IN[key_map](model), key_map, False
    elif isinstance(key_map, dict):
        rename, label, dropping = _regex(key_map), f"{len(key_map)} regex rules", True
    else:
        raise ConfigError(f"pretrained_key_map: give a built-in map's name or a mapping {{regex: replacement}}, not {key_map!r}")
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in state.items():
        new = rename(key)
        if new is None and dropping:
            renamed += 1
            continue
        new = key if new is None else new
        if new in out:
            raise ConfigError(f"pretrained_key_map {label}: two keys become {new!r} (the second is {key!r}).")
        renamed += new != key
        out[new] = value
    return out, renamed, label
