"""Every family builds for square and non-square inputs, trains, and gives pooled features and feature maps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from medconv.errors import ConfigError
from medconv.models import TimmBackbone

_spec = importlib.util.spec_from_file_location("_tiny", Path(__file__).with_name("_tiny.py"))
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)
FAMILIES = _tiny.FAMILIES


def _tiny_backbone(family: str, size=(64, 64), **options) -> TimmBackbone:
    name, model_args = FAMILIES[family]
    return TimmBackbone(name, in_chans=1, img_size=size, model_args=model_args, **options)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_on_non_square_input(family):
    """Two optimizer steps through a linear head at 128x64 (portrait, like a mammogram) reduce the loss."""
    torch.manual_seed(0)
    backbone = _tiny_backbone(family, size=(128, 64))
    head = nn.Linear(backbone.num_features, 2)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x, y = torch.randn(2, 1, 128, 64), torch.tensor([0, 1])
    losses = []
    for _ in range(4):
        loss = nn.functional.cross_entropy(head(backbone(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert backbone(x).shape == (2, backbone.num_features)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("size", [(64, 128)])
def test_feature_maps_follow_input_shape(family, size):
    backbone = _tiny_backbone(family, size=size).eval()
    with torch.no_grad():
        maps = backbone.feature_maps(torch.randn(1, 1, *size))
    info = backbone.feature_info
    assert len(maps) == len(info) > 1
    for fmap, stage in zip(maps, info, strict=True):
        assert fmap.shape[1] == stage["num_chs"]
        assert tuple(fmap.shape[2:]) == (size[0] // stage["reduction"], size[1] // stage["reduction"])


def test_img_size_is_ignored_by_models_that_take_any_size():
    backbone = _tiny_backbone("convnext", size=(96, 64))
    assert backbone(torch.randn(1, 1, 64, 160)).shape == (1, backbone.num_features)


def test_fixed_size_model_rejects_other_size_unless_dynamic():
    fixed = _tiny_backbone("swin", size=(64, 64))
    with pytest.raises(AssertionError):
        fixed(torch.randn(1, 1, 96, 64))
    dynamic = _tiny_backbone("swin", size=(64, 64), dynamic_img_size=True)
    assert dynamic(torch.randn(1, 1, 96, 64)).shape == (1, dynamic.num_features)


def test_set_input_size_rebuilds_windows_and_position_embeddings():
    backbone = _tiny_backbone("vit", size=(64, 64))
    backbone.set_input_size((64, 128))
    assert backbone(torch.randn(1, 1, 64, 128)).shape == (1, backbone.num_features)
    with pytest.raises(ConfigError, match="rebuild it with img_size"):
        _tiny_backbone("hiera").set_input_size((128, 128))


def test_hiera_size_must_fit_mask_units():
    with pytest.raises(ConfigError, match="hiera_tiny_224"):
        _tiny_backbone("hiera", size=(72, 64))


def test_unknown_model_name_is_a_config_error():
    with pytest.raises(ConfigError, match="not_a_model"):
        TimmBackbone("not_a_model")


def test_channels_last_keeps_outputs():
    torch.manual_seed(0)
    plain = _tiny_backbone("convnext").eval()
    nhwc = _tiny_backbone("convnext", channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x), plain(x), atol=1e-4, rtol=1e-4)


def test_gresnet_registers_with_timm_when_present():
    import timm

    import medconv.models  # noqa: F401

    if importlib.util.find_spec("medconv.models.gresnet") is None:
        pytest.skip("medconv/models/gresnet.py not written yet")
    assert timm.is_model("gresnet50")


BACKBONE_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "backbones").glob("*.yaml"))


@pytest.mark.parametrize("config", BACKBONE_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("size", [(2048, 1024), (224, 224)], ids=["mammo", "tile"])
def test_shipped_backbone_configs_take_full_resolution(config, size):
    """The real models of configs/backbones at mammogram and tile size, shapes only (meta device: no memory)."""
    import yaml

    spec = yaml.safe_load(config.read_text())
    assert spec["class_path"] == "medconv.models.TimmBackbone"
    with torch.device("meta"):
        backbone = TimmBackbone(**spec["init_args"], img_size=size, in_chans=1)
        features = backbone(torch.empty(2, 1, *size))
    assert features.shape == (2, backbone.num_features)
