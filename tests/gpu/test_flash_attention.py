"""On a GPU: flash is the kernel actually used at bf16 and matches math attention; 16-mixed trains; compile runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from medconv.models import TimmBackbone

pytestmark = pytest.mark.gpu

FLASH_FAMILIES = {  # attention without a bias: flash-eligible
    "vit": ("vit_tiny_patch16_224", {"depth": 2, "embed_dim": 128, "num_heads": 2}),
    "hiera": ("hiera_tiny_224", {"stages": [1, 1, 2, 1], "embed_dim": 64, "num_heads": 1}),
    "pvt_v2": ("pvt_v2_b0", {"depths": [1, 1, 1, 1]}),
}
BIASED_FAMILIES = {  # relative-position bias as attn_mask: memory-efficient kernel
    "swin": ("swin_tiny_patch4_window7_224", {"depths": [1, 1, 2, 1]}),
    "swinv2": ("swinv2_tiny_window8_256", {"depths": [1, 1, 2, 1]}),
}


def _pair(spec, kernel_a: str, kernel_b: str, size=(256, 128)):
    name, model_args = spec
    torch.manual_seed(0)
    a = TimmBackbone(name, img_size=size, attention=kernel_a, model_args=model_args).cuda().eval()
    b = TimmBackbone(name, img_size=size, attention=kernel_b, model_args=model_args).cuda().eval()
    b.load_state_dict(a.state_dict())
    return a, b


def test_flash_kernel_is_selected_at_bf16():
    q, k, v = (torch.randn(2, 4, 1024, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if flash cannot run
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out = F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel([SDPBackend.MATH]):
        reference = F.scaled_dot_product_attention(q, k, v)
    names = " ".join(e.name for e in prof.events()).lower()
    assert "flash" in names, names[:500]
    torch.testing.assert_close(out.float(), reference.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("family", list(FLASH_FAMILIES))
def test_flash_matches_math_at_bf16(family):
    flash, math = _pair(FLASH_FAMILIES[family], "flash", "math")
    x = torch.randn(2, 3, 256, 128, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out_flash = flash(x)
        out_math = math(x)
    assert "flash" in " ".join(e.name for e in prof.events()).lower()
    torch.testing.assert_close(out_flash.float(), out_math.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("family", list(BIASED_FAMILIES))
def test_efficient_matches_math_for_biased_windows(family):
    efficient, math = _pair(BIASED_FAMILIES[family], "efficient", "math")
    x = torch.randn(2, 3, 256, 128, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(efficient(x).float(), math(x).float(), atol=3e-2, rtol=3e-2)


def test_sixteen_mixed_with_loss_scaling_trains_checkpointed_hiera():
    import lightning as L
    from torch.utils.data import DataLoader

    from medconv import keys
    from medconv.tasks import ClassificationModule

    name, model_args = FLASH_FAMILIES["hiera"]
    backbone = TimmBackbone(name, img_size=(256, 128), grad_checkpointing=True, attention="flash", model_args=model_args)
    task = ClassificationModule(backbone=backbone, num_classes=2)
    batches = [{keys.IMAGE: torch.randn(2, 3, 256, 128), keys.LABEL: torch.tensor([0, 1])}] * 3
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="16-mixed", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(task, DataLoader(batches, batch_size=None))
    assert trainer.global_step == 3
    assert type(trainer.precision_plugin.scaler).__name__ == "GradScaler"


def test_compile_and_channels_last_on_gpu():
    backbone = TimmBackbone("convnext_atto", img_size=(128, 128), channels_last=True, compile=True).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = backbone(torch.randn(2, 3, 128, 128, device="cuda"))
    assert out.shape == (2, backbone.num_features)
    assert all(not k.startswith("_orig_mod") for k in backbone.state_dict())
