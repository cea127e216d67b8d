"""Every ViT family attends through SDPA, the kernel switch holds (also on recompute), SwinV2's rewrite is exact."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models import swin_transformer, swin_transformer_v2

from medconv.errors import ConfigError
from medconv.models import TimmBackbone, sdpa_backends
from medconv.models.attention import SdpaWindowAttentionV2

_spec = importlib.util.spec_from_file_location("_tiny", Path(__file__).with_name("_tiny.py"))
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)
FAMILIES, VIT_FAMILIES = _tiny.FAMILIES, _tiny.VIT_FAMILIES


def _tiny_backbone(family: str, size=(64, 64), **options) -> TimmBackbone:
    name, model_args = FAMILIES[family]
    return TimmBackbone(name, in_chans=1, img_size=size, model_args=model_args, **options)


def _count_attention_like(model: torch.nn.Module) -> int:
    """Attention modules found by structure (a qkv projection, or q and kv ones), independent of medconv."""
    return sum(1 for m in model.modules() if hasattr(m, "qkv") or (hasattr(m, "q") and hasattr(m, "kv")))


class _Spy:
    """Counts SDPA calls (and the flash flag at each) and any softmax, so a hand-written path shows up."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.sdpa_calls = 0
        self.flash_enabled: list[bool] = []
        self.softmax_calls = 0
        sdpa, softmax, tensor_softmax = F.scaled_dot_product_attention, F.softmax, torch.Tensor.softmax

        def counting_sdpa(*args, **kwargs):
            self.sdpa_calls += 1
            self.flash_enabled.append(torch.backends.cuda.flash_sdp_enabled())
            return sdpa(*args, **kwargs)

        def counting_softmax(*args, **kwargs):
            self.softmax_calls += 1
            return softmax(*args, **kwargs)

        def counting_tensor_softmax(tensor, *args, **kwargs):
            self.softmax_calls += 1
            return tensor_softmax(tensor, *args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
        monkeypatch.setattr(F, "softmax", counting_softmax)
        monkeypatch.setattr(torch.Tensor, "softmax", counting_tensor_softmax)


@pytest.mark.parametrize("family", VIT_FAMILIES)
def test_every_attention_layer_calls_sdpa_and_none_uses_softmax(family, monkeypatch):
    backbone = _tiny_backbone(family, size=(64, 128)).eval()
    expected = _count_attention_like(backbone.model)
    assert expected > 0 and backbone.num_attention_layers == expected
    spy = _Spy(monkeypatch)
    with torch.no_grad():
        backbone(torch.randn(1, 1, 64, 128))
    assert spy.sdpa_calls == expected
    assert spy.softmax_calls == 0


def test_cnn_has_no_attention_layers():
    assert _tiny_backbone("convnext").num_attention_layers == 0


@pytest.mark.parametrize("family", ["swin", "hiera"])
def test_kernel_choice_holds_when_checkpointing_recomputes(family, monkeypatch):
    backbone = _tiny_backbone(family, grad_checkpointing=True, attention="math").train()
    spy = _Spy(monkeypatch)
    backbone(torch.randn(2, 1, 64, 64)).sum().backward()
    n = backbone.num_attention_layers
    assert spy.sdpa_calls == 2 * n  # forward, then the recomputation inside backward
    assert spy.flash_enabled == [False] * (2 * n)
    assert torch.backends.cuda.flash_sdp_enabled()  # restored afterwards


@pytest.mark.parametrize("family", VIT_FAMILIES)
def test_math_and_flash_kernels_agree_on_cpu(family):
    """CPU has math and flash SDPA (memory-efficient is CUDA-only: tests/gpu covers it)."""
    torch.manual_seed(0)
    math_model = _tiny_backbone(family, attention="math").eval()
    flash_model = _tiny_backbone(family, attention="flash").eval()
    flash_model.load_state_dict(math_model.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(flash_model(x), math_model(x), atol=1e-4, rtol=1e-4)


def test_unknown_kernel_is_a_config_error():
    with pytest.raises(ConfigError, match="attention='fastest'"):
        sdpa_backends("fastest")
    with pytest.raises(ConfigError):
        _tiny_backbone("vit", attention="fastest")


@pytest.mark.parametrize("shifted", [False, True])
def test_swinv2_sdpa_rewrite_equals_timm_attention(shifted):
    torch.manual_seed(0)
    window, heads, dim = (4, 4), 2, 16
    original = swin_transformer_v2.WindowAttention(dim, window_size=window, num_heads=heads).eval()
    with torch.no_grad():  # non-trivial scale and biases
        original.logit_scale.uniform_(0.5, 3.0)
        original.q_bias.normal_()
        original.v_bias.normal_()
    rewritten = swin_transformer_v2.WindowAttention(dim, window_size=window, num_heads=heads).eval()
    rewritten.load_state_dict(original.state_dict())
    rewritten.__class__ = SdpaWindowAttentionV2
    num_win, batch, n = 3, 2, window[0] * window[1]
    x = torch.randn(num_win * batch, n, dim)
    mask = None
    if shifted:
        mask = torch.zeros(num_win, n, n).masked_fill(torch.rand(num_win, n, n) > 0.7, -100.0)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x, mask), original(x, mask), atol=1e-5, rtol=1e-5)


def test_swinv2_model_output_unchanged_by_rewrite():
    torch.manual_seed(0)
    name, model_args = FAMILIES["swinv2"]
    import timm

    reference = timm.create_model(name, num_classes=0, in_chans=1, img_size=(64, 128), **model_args).eval()
    backbone = _tiny_backbone("swinv2", size=(64, 128)).eval()
    backbone.model.load_state_dict(reference.state_dict())
    assert all(type(m) is not swin_transformer_v2.WindowAttention for m in backbone.modules())
    x = torch.randn(2, 1, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference(x), atol=1e-4, rtol=1e-4)


def test_hiera_windowed_attention_rewrite_equals_timm():
    import timm

    torch.manual_seed(0)
    name, model_args = FAMILIES["hiera"]
    reference = timm.create_model(name, num_classes=0, in_chans=1, img_size=(64, 128), **model_args).eval()
    backbone = _tiny_backbone("hiera", size=(64, 128)).eval()
    backbone.model.load_state_dict(reference.state_dict())
    assert any(m.use_mask_unit_attn and m.q_stride > 1 for m in backbone.modules() if hasattr(m, "use_mask_unit_attn"))
    x = torch.randn(2, 1, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shifted", [False, True])
def test_swin_v1_rewrite_equals_timm_attention_and_chunks_exactly(shifted, monkeypatch):
    from medconv.models import attention

    torch.manual_seed(0)
    window, heads, dim = (4, 4), 2, 16
    original = swin_transformer.WindowAttention(dim, num_heads=heads, window_size=window).eval()
    original.fused_attn = False  # timm's explicit softmax path is the reference
    with torch.no_grad():
        original.relative_position_bias_table.normal_()
    rewritten = swin_transformer.WindowAttention(dim, num_heads=heads, window_size=window).eval()
    rewritten.load_state_dict(original.state_dict())
    rewritten.__class__ = attention.SdpaWindowAttention
    num_win, batch, n = 3, 3, window[0] * window[1]
    x = torch.randn(num_win * batch, n, dim)
    mask = torch.zeros(num_win, n, n).masked_fill(torch.rand(num_win, n, n) > 0.7, -100.0) if shifted else None
    with torch.no_grad():
        expected = original(x, mask)
        torch.testing.assert_close(rewritten(x, mask), expected, atol=1e-5, rtol=1e-5)
        # More windows than one kernel call may take: split into chunks (here of 4 of the 9), same result.
        monkeypatch.setattr(attention, "MAX_SDPA_BATCH", 4)
        torch.testing.assert_close(rewritten(x, mask), expected, atol=1e-5, rtol=1e-5)


def test_swinv2_bias_is_contiguous_for_the_fused_kernels():
    module = swin_transformer_v2.WindowAttention(16, window_size=(4, 4), num_heads=2)
    module.__class__ = SdpaWindowAttentionV2
    bias = module._position_bias()
    assert bias.shape == (1, 2, 16, 16) and bias.is_contiguous()
