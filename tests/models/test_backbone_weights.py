"""Local pretrained weights: loaded exactly, every mismatch reported (or an error), sizes adapted."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from medconv.errors import ConfigError, InputFileError
from medconv.models import TimmBackbone, load_local_weights

VIT = ("vit_tiny_patch16_224", {"depth": 1, "embed_dim": 32, "num_heads": 2})
SWIN = ("swin_tiny_patch4_window7_224", {"depths": [1, 1, 1, 1], "embed_dim": 16, "num_heads": [1, 1, 1, 1]})
HIERA = ("hiera_tiny_224", {"stages": [1, 1, 1, 1], "embed_dim": 16, "num_heads": 1})


def _timm(spec, **kwargs):
    name, model_args = spec
    return timm.create_model(name, pretrained=False, **model_args, **kwargs)


def _backbone(spec, **kwargs) -> TimmBackbone:
    name, model_args = spec
    return TimmBackbone(name, model_args=model_args, **kwargs)


def _same(backbone: TimmBackbone, source: torch.nn.Module) -> bool:
    theirs = source.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in backbone.model.state_dict().items() if k in theirs)


def test_timm_checkpoint_with_classifier_loads_without_complaint(tmp_path):
    source = _timm(VIT, num_classes=5, img_size=64)  # a classifier checkpoint: its head is not ours to load
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = _backbone(VIT, img_size=(64, 64), pretrained_path=str(path))
    report = backbone.weight_report
    assert report.ok and report.classifier_dropped == ["head.weight", "head.bias"]
    assert _same(backbone, source)


def test_missing_and_unexpected_keys_are_reported_by_name(tmp_path):
    state = _timm(VIT, num_classes=0, img_size=64).state_dict()
    del state["blocks.0.attn.qkv.weight"]
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "vit.safetensors"))
    with pytest.warns(UserWarning, match=r"1 missing keys \[blocks.0.attn.qkv.weight\].*1 unexpected keys \[extra.weight\]"):
        backbone = _backbone(VIT, img_size=(64, 64), pretrained_path=str(tmp_path / "vit.safetensors"))
    assert backbone.weight_report.missing == ["blocks.0.attn.qkv.weight"]
    assert backbone.weight_report.unexpected == ["extra.weight"]


def test_strict_weights_makes_a_mismatch_an_error(tmp_path):
    state = _timm(VIT, num_classes=0, img_size=64).state_dict()
    del state["norm.weight"]
    torch.save(state, tmp_path / "vit.pth")
    with pytest.raises(ConfigError, match="norm.weight"):
        _backbone(VIT, img_size=(64, 64), pretrained_path=str(tmp_path / "vit.pth"), strict_weights=True)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(InputFileError, match="nowhere.safetensors"):
        _backbone(VIT, img_size=(64, 64), pretrained_path=str(tmp_path / "nowhere.safetensors"))


def test_lightning_checkpoint_prefix_is_stripped(tmp_path):
    """A checkpoint of our classification task holds `backbone.model.*` and the task's `head.*`."""
    source = _backbone(SWIN, img_size=(64, 64))
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["head.weight"] = torch.zeros(2, source.num_features)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "last.ckpt")
    target = _backbone(SWIN, img_size=(64, 64), pretrained_path=str(tmp_path / "last.ckpt"))
    assert target.weight_report.prefix == "backbone.model."
    assert target.weight_report.outside_prefix == ["head.weight"]
    assert "ignored 1 keys outside it [head.weight]" in target.weight_report.summary()
    assert target.weight_report.ok and _same(target, source.model)


def test_position_embeddings_resized_for_another_input_size(tmp_path):
    """Pretrained at 64x64, used at 128x64: ViT pos_embed, Swin relative tables, Hiera pos_embed adapt."""
    for spec in (VIT, SWIN, HIERA):
        source = _timm(spec, num_classes=0, img_size=64)
        torch.save(source.state_dict(), tmp_path / "w.pth")
        backbone = _backbone(spec, img_size=(128, 64), pretrained_path=str(tmp_path / "w.pth"))
        report = backbone.weight_report
        assert report.ok, report.summary()
        assert backbone(torch.randn(1, 3, 128, 64)).shape == (1, backbone.num_features)
        if spec is not SWIN:  # Swin's 7x7 windows fit both grids: nothing to resize
            assert "pos_embed" in report.resized


def test_shape_mismatch_is_reported_not_crashing(tmp_path):
    state = _timm(VIT, num_classes=0, img_size=64).state_dict()
    state["norm.weight"] = torch.ones(7)
    torch.save(state, tmp_path / "vit.pth")
    with pytest.warns(UserWarning, match=r"1 shape mismatch keys \[norm.weight: \(7,\) -> \(32,\)\]"):
        _backbone(VIT, img_size=(64, 64), pretrained_path=str(tmp_path / "vit.pth"))


def test_load_local_weights_directly_returns_report(tmp_path):
    source = _timm(HIERA, num_classes=0, img_size=64)
    save_file(source.state_dict(), str(tmp_path / "h.safetensors"))
    target = _timm(HIERA, num_classes=0, img_size=64)
    report = load_local_weights(target, tmp_path / "h.safetensors")
    assert report.ok and len(report.loaded) == len(source.state_dict())
