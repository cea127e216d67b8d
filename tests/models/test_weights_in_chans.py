"""RGB weights in a model with another `in_chans`: the input conv is adapted, never left random (regression).

Mammograms are one channel. Given RGB weights, a grey model must answer on a grey image as the RGB model
answers on that image repeated over three channels, for every family we ship and every file format we read.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medconv.models import TimmBackbone

_spec = importlib.util.spec_from_file_location("_tiny", Path(__file__).with_name("_tiny.py"))
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)
FAMILIES = _tiny.FAMILIES
SIZE = (64, 64)
FORMATS = {"vit": "safetensors", "swin": "lightning"}  # one family per other format; the rest .pth


def _build(family: str, in_chans: int = 3, path: Path | None = None) -> TimmBackbone:
    name, model_args = FAMILIES[family]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mismatch would only warn: make it fail here
        model = TimmBackbone(name, in_chans=in_chans, img_size=SIZE, model_args=model_args,
                             pretrained_path=str(path) if path else None)
    return model.eval()


def _rgb(family: str, means: tuple[float, ...] = (0.3, 0.3, 0.3)) -> TimmBackbone:
    """A random RGB model moved off its init constants (layer scale 1e-6, zero biases, unit norm stats)."""
    torch.manual_seed(0)
    model = _build(family)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if family == "gresnet":  # its stem normalises the raw input per channel
            model.model.stem.conv1.norm.running_mean.copy_(torch.tensor(means))
            model.model.stem.conv1.norm.running_var.copy_(torch.tensor([0.5, 2.0, 1.3]))
    return model


def _save(model: TimmBackbone, folder: Path, fmt: str = "pth") -> Path:
    state = model.model.state_dict()
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "rgb.safetensors"))
        return folder / "rgb.safetensors"
    if fmt == "lightning":  # our classification task: backbone.model.* plus its own head
        state = {f"backbone.model.{k}": v for k, v in state.items()} | {"head.weight": torch.zeros(2, 8)}
        torch.save({"state_dict": state, "epoch": 1}, folder / "last.ckpt")
        return folder / "last.ckpt"
    torch.save(state, folder / "rgb.pth")
    return folder / "rgb.pth"


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def _stem(model: TimmBackbone) -> str:
    return model.model.pretrained_cfg["first_conv"] + ".weight"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rgb_weights_give_a_grey_model_the_rgb_answer(family, tmp_path):
    rgb = _rgb(family)
    grey = _build(family, in_chans=1, path=_save(rgb, tmp_path, FORMATS.get(family, "pth")))
    report = grey.weight_report
    assert report.ok and not report.mismatched, report.summary()
    assert any(a.startswith(f"{_stem(rgb)}: ") and a.endswith("summed over RGB") for a in report.adapted)
    assert "adapted" in report.summary()
    x = torch.rand(2, 1, *SIZE)
    with torch.no_grad():
        _close(grey(x), rgb(x.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("family", ["convnext", "gresnet"])
def test_more_channels_repeat_and_rescale_the_rgb_weights(family, tmp_path):
    """Six channels holding RGB twice give the RGB answer; two channels load without a mismatch."""
    rgb = _rgb(family)
    path = _save(rgb, tmp_path)
    six = _build(family, in_chans=6, path=path)
    assert six.weight_report.ok and any(a.endswith("repeated and rescaled") for a in six.weight_report.adapted)
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        _close(six(x.repeat(1, 2, 1, 1)), rgb(x))
    two = _build(family, in_chans=2, path=path)
    assert two.weight_report.ok and not two.weight_report.mismatched, two.weight_report.summary()
    if family == "convnext":  # timm's rule: the first two RGB filters, scaled by 3/2
        _close(two.model.stem[0].weight, rgb.model.stem[0].weight[:, :2] * 1.5)


def test_gresnet_unequal_channel_means_fold_into_the_stem_bias(tmp_path):
    """Exact away from the zero padding, which the RGB stem applies after its per-channel centring."""
    rgb = _rgb("gresnet", means=(0.1, -0.4, 0.7))
    grey = _build("gresnet", in_chans=1, path=_save(rgb, tmp_path))
    assert "stem.conv1.affine.bias: RGB mean differences folded in" in grey.weight_report.adapted
    x = torch.rand(2, 1, *SIZE)
    with torch.no_grad():  # 3x3 stride-2 conv with padding 1: only the first row and column read the padding
        _close(grey.model.stem.conv1(x)[..., 1:, 1:], rgb.model.stem.conv1(x.repeat(1, 3, 1, 1))[..., 1:, 1:])
