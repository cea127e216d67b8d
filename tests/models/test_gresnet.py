"""GResNet: ResNet-d details, split-norm ordering, exact fuse (borders too), timm API, learning."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import medconv.models.gresnet  # noqa: F401  (registers gresnet* with timm)
from medconv.models.gresnet import GResNet, Shortcut
from medconv.models.split_norm import FusedConv2d, SplitNormConv2d

pytestmark = pytest.mark.usefixtures("one_thread")



def _tiny(**kwargs) -> GResNet:
    torch.manual_seed(0)
    return timm.create_model("gresnet_tiny", pretrained=False, **kwargs)


def _train_a_little(model: nn.Module, steps: int = 3, size: tuple[int, int] = (64, 64)) -> None:
    """SGD steps on shifted inputs: running means far from 0, affines away from 1/0, zero-init last gone."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, model.in_chans, *size, generator=gen) * 2.0 + 1.5
        loss = F.cross_entropy(model(x), torch.arange(4) % model.num_classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def trained_tiny() -> GResNet:
    model = _tiny(num_classes=3)
    _train_a_little(model)
    return model


def test_gresnet50_has_25_7m_parameters():
    model = timm.create_model("gresnet50", pretrained=False)
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(25.7e6, rel=0.02)
    assert model.num_features == 2048


def test_resnet_d_structure():
    model = timm.create_model("gresnet50", pretrained=False)
    stem = [model.stem.conv1, model.stem.conv2, model.stem.conv3]
    assert [c.conv.out_channels for c in stem] == [32, 64, 128]
    assert [c.conv.stride for c in stem] == [(2, 2), (1, 1), (1, 1)]
    assert all(c.conv.kernel_size == (3, 3) for c in stem)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.ReLU)) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 3 + 3 * 16

    for stage in model.stages:
        first = stage[0]
        assert first.conv1.conv.kernel_size == (1, 1) and first.conv1.conv.stride == (1, 1)
        assert first.conv2.conv.kernel_size == (3, 3) and first.conv2.conv.stride == (2, 2)
        assert isinstance(first.shortcut, Shortcut)
        pool = first.shortcut.pool
        assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
        assert first.shortcut.conv.conv.kernel_size == (1, 1) and first.shortcut.conv.conv.stride == (1, 1)
        assert all(isinstance(b.shortcut, nn.Identity) for b in stage[1:])

    # no max pool: the stem halves, stage 1 halves again
    with torch.no_grad():
        stem_out = model.stem(torch.zeros(1, 3, 64, 96))
        assert stem_out.shape == (1, 128, 32, 48)
        assert model.stages[0](stem_out).shape == (1, 256, 16, 24)


def test_split_norm_normalises_before_conv_and_applies_affine_after():
    model = _tiny()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    split = [m for m in model.modules() if isinstance(m, SplitNormConv2d)]
    assert len(convs) == len(split) > 0  # every conv is split-normalised
    assert not any(isinstance(m, nn.BatchNorm2d) and m.affine for m in model.modules())

    layer = model.stages[1][0].conv2
    assert layer.conv.bias is None and not list(layer.norm.parameters())
    assert layer.affine.weight.shape == layer.affine.bias.shape == (layer.conv.out_channels,)
    order: list[str] = []
    for name in ("norm", "conv", "affine"):
        getattr(layer, name).register_forward_hook(lambda m, i, o, name=name: order.append(name))
    model(torch.randn(2, 3, 64, 64))
    assert order == ["norm", "conv", "affine"]

    # the affine acts on the conv output: its size is the output width, and it is exactly scale * y + shift
    layer.eval()
    with torch.no_grad():
        layer.affine.weight.uniform_(0.5, 2.0)
        layer.affine.bias.normal_()
        x = torch.randn(2, layer.conv.in_channels, 8, 8)
        y = layer.conv(layer.norm(x))
        expected = y * layer.affine.weight.view(1, -1, 1, 1) + layer.affine.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), expected)


def _nontrivial_split_conv(in_chs: int, out_chs: int, k: int, stride: int) -> SplitNormConv2d:
    torch.manual_seed(k * 10 + stride)
    layer = SplitNormConv2d(in_chs, out_chs, k, stride)
    with torch.no_grad():
        layer.norm.running_mean.uniform_(1.0, 3.0)  # far from 0: the mean padding matters
        layer.norm.running_var.uniform_(0.5, 2.0)
        layer.affine.weight.uniform_(0.5, 1.5)
        layer.affine.bias.normal_()
    return layer.eval()


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2), (1, 1)])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 5), (16, 16), (17, 12)])
def test_fused_conv_equals_split_norm_conv_everywhere(k, stride, hw):
    layer = _nontrivial_split_conv(4, 6, k, stride)
    fused = layer.fuse()
    assert isinstance(fused, FusedConv2d)
    x = torch.randn(3, 4, *hw) * 2.0 + 2.0
    with torch.no_grad():
        torch.testing.assert_close(fused(x), layer(x), rtol=1e-5, atol=1e-5)
        # the same as padding the raw input with the per-channel mean explicitly
        pad = layer.conv.padding[0]
        framed = layer.norm.running_mean.view(1, -1, 1, 1).expand(3, -1, hw[0] + 2 * pad, hw[1] + 2 * pad).clone()
        framed[:, :, pad : pad + hw[0], pad : pad + hw[1]] = x
        expected = F.conv2d(framed, fused.weight, fused.bias, fused.stride)
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_naive_fold_is_wrong_at_the_borders_only():
    """Negative control: zero padding of the raw input differs from the unfused conv exactly at the border."""
    layer = _nontrivial_split_conv(4, 6, 3, 1)
    fused = layer.fuse()
    x = torch.randn(2, 4, 12, 10) + 2.0
    with torch.no_grad():
        naive = F.conv2d(x, fused.weight, fused.bias, fused.stride, fused.padding)
        err = (naive - layer(x)).abs()
    assert err[:, :, 1:-1, 1:-1].max() < 1e-4
    assert err[:, :, 0].min() > 1e-3 and err[:, :, -1].min() > 1e-3
    assert err[:, :, :, 0].min() > 1e-3 and err[:, :, :, -1].min() > 1e-3


@pytest.mark.parametrize("hw,channels_last", [((64, 64), False), ((96, 64), True), ((65, 47), False)])
def test_fused_model_matches_eval_model(trained_tiny, hw, channels_last):
    model = trained_tiny
    means = [m.norm.running_mean.abs().max().item() for m in model.modules() if isinstance(m, SplitNormConv2d)]
    assert max(means) > 0.1  # training made the statistics non-trivial
    fused = copy.deepcopy(model).fuse()
    assert fused.fused and not any(isinstance(m, (SplitNormConv2d, nn.BatchNorm2d)) for m in fused.modules())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model_f, fused = copy.deepcopy(model).to(memory_format=fmt), fused.to(memory_format=fmt)
    x = (torch.randn(2, 3, *hw) * 2.0 + 1.5).contiguous(memory_format=fmt)
    with torch.no_grad():
        ref_feat, feat = model_f.forward_features(x), fused.forward_features(x)
        ref, out = model_f(x), fused(x)
    scale = ref_feat.abs().max()
    assert ((feat - ref_feat).abs().max() / scale) < 1e-4
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-4
    # borders of the first feature map, where a naive fold fails
    with torch.no_grad():
        ref_stem, stem = model_f.stem(x), fused.stem(x)
    torch.testing.assert_close(stem, ref_stem, rtol=1e-4, atol=1e-4 * ref_stem.abs().max().item())


def test_timm_reparameterize_model_uses_fuse(trained_tiny):
    from timm.utils import reparameterize_model

    fused = reparameterize_model(trained_tiny)  # a fused deep copy
    assert any(isinstance(m, FusedConv2d) for m in fused.modules())
    assert any(isinstance(m, SplitNormConv2d) for m in trained_tiny.modules())
    x = torch.randn(2, 3, 64, 48) + 1.0
    with torch.no_grad():
        torch.testing.assert_close(fused(x), trained_tiny(x), rtol=1e-4, atol=1e-5)


def test_timm_api():
    model = _tiny(num_classes=4, in_chans=1)
    x = torch.randn(2, 1, 96, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 3, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert model(x).shape == (2, 4)
    assert model.get_classifier().out_features == 4 and model.get_classifier(name_only=True) == "head.fc"

    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    model.reset_classifier(5, global_pool="max")
    assert model(x).shape == (2, 5)

    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    assert cfg["input_size"][0] == 3 and len(cfg["mean"]) == len(cfg["std"]) == 3
    assert not cfg.get("url") and not cfg.get("hf_hub_id")
    assert cfg["first_conv"] == "stem.conv1.conv" and cfg["classifier"] == "head.fc"
    assert model.get_submodule(cfg["first_conv"]).in_channels == 1
    assert timm.data.resolve_data_config({}, model=model)["mean"] == cfg["mean"]
    assert set(model.group_matcher()) == {"stem", "blocks"}


def test_channels_last_and_non_square():
    model = _tiny(num_classes=2).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        ref = model.forward_features(x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out = cl.forward_features(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape == (2, model.num_features, 3, 2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_features_only():
    model = timm.create_model("gresnet_tiny", pretrained=False, features_only=True, in_chans=1)
    x = torch.randn(1, 1, 96, 64)
    feats = model(x)
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [tuple(f.shape[-2:]) for f in feats] == [(96 // r, 64 // r) for r in model.feature_info.reduction()]

    picked = timm.create_model("gresnet_tiny", pretrained=False, features_only=True, out_indices=(1, 4))
    assert picked.feature_info.channels() == [16, 128]
    assert [f.shape for f in picked(torch.randn(1, 3, 64, 64))] == [(1, 16, 16, 16), (1, 128, 2, 2)]

    getter = timm.create_model("gresnet_tiny", pretrained=False, features_only=True, feature_cls="getter")
    assert [f.shape[1] for f in getter(torch.randn(1, 3, 64, 64))] == getter.feature_info.channels()


def test_grad_checkpointing_recomputes_and_gives_same_gradients():
    model = _tiny(num_classes=2).train()
    x = torch.randn(2, 3, 64, 64)

    def grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        calls = []
        hook = model.stages[2][0].conv1.conv.register_forward_hook(lambda *a: calls.append(1))
        model(x).sum().backward()
        hook.remove()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)

    plain, plain_calls = grads(False)
    ckpt, ckpt_calls = grads(True)
    assert plain_calls == 1 and ckpt_calls == 2  # really recomputed in backward
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-6)


def test_drop_path_rate():
    model = _tiny(drop_path_rate=0.3)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.3) and len(rates) == 3  # first block: 0
    model = _tiny(drop_path_rate=0.9, zero_init_last=False).eval()  # zero-init residuals would hide drops
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: deterministic
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.allclose(a, b)


def test_a_few_steps_reduce_the_loss():
    """Bright square top-left (class 0) vs bottom-right (class 1) on noise: learnable in a few steps."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 64, 64, generator=gen) * 0.5
    y = torch.arange(8) % 2
    x[y == 0, :, 8:24, 8:24] += 2.0
    x[y == 1, :, 40:56, 40:56] += 2.0
    model = _tiny(num_classes=2, in_chans=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
