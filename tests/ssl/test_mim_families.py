"""Masked forwards per family: no leak of masked pixels, alignment with the stride-32 cells, sparse CNN semantics
(visible features = the dense CNN on the visible region alone; BatchNorm statistics over visible positions),
training lowers the loss, and the backbone keeps timm's keys."""

import copy

import pytest
import torch

from medconv.models import TimmBackbone
from medconv.ssl import MaskedImageModelling
from medconv.ssl.masking import mask_to_pixels, random_grid_mask

pytestmark = pytest.mark.usefixtures("one_thread")

# tiny timm configs; Swin windows of 4 tile the 16/8/4/2 grids of a 64x64 input (clamped to 2 at the last stage)
FAMILIES = {
    "convnext": ("convnext_atto", {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}, (64, 96)),
    "resnet_d": ("resnet50d", {"layers": [1, 1, 1, 1], "channels": [8, 16, 24, 32], "stem_width": 8}, (64, 96)),
    "gresnet": ("gresnet_tiny", {}, (64, 96)),
    "swin": ("swin_tiny_patch4_window7_224", {"depths": [1, 2, 1, 1], "embed_dim": 16, "num_heads": [1] * 4, "window_size": 4}, (64, 64)),
    "swinv2": ("swinv2_tiny_window8_256", {"depths": [1, 2, 1, 1], "embed_dim": 16, "num_heads": [1] * 4, "window_size": 4}, (64, 64)),
    "pvt_v2": ("pvt_v2_b0", {"depths": [1, 1, 1, 1], "embed_dims": [8, 16, 24, 32], "num_heads": [1] * 4}, (64, 96)),
    "vit": ("vit_tiny_patch16_224", {"depth": 1, "embed_dim": 16, "num_heads": 1}, (64, 96)),
    "hiera": ("hiera_tiny_224", {"stages": [1, 1, 1, 1], "embed_dim": 16, "num_heads": 1}, (64, 96)),
}
CNNS = ["convnext", "resnet_d", "gresnet"]



def build(family: str, in_chans: int = 1, **kwargs) -> MaskedImageModelling:
    """The objective over a tiny backbone whose zero-initialised residual branches (ConvNeXt's layer scale 1e-6,
    zero_init_last) are woken up: at init they pass nothing, and a leak through them would go unseen."""
    name, args, size = FAMILIES[family]
    torch.manual_seed(0)
    backbone = TimmBackbone(name, in_chans=in_chans, img_size=size, model_args=args)
    with torch.no_grad():
        for p in backbone.parameters():
            if p.abs().max() < 1e-4:
                p.normal_(0.0, 0.5)
    return MaskedImageModelling(backbone, **kwargs)


def inputs(family: str, batch: int = 2, in_chans: int = 1, seed: int = 0):
    h, w = FAMILIES[family][2]
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, in_chans, h, w, generator=gen)
    mask = random_grid_mask(batch, (h // 32, w // 32), 0.6, generator=gen)
    scribble = 100 * torch.randn(image.shape, generator=gen) * mask_to_pixels(mask)  # new content under the mask only
    return image, mask, image + scribble


def encode(objective: MaskedImageModelling, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # Swin's default stochastic depth draws in train mode: same draws for both inputs
    return objective.encoder(image, mask)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_masked_pixels_do_not_reach_the_encoder_output(family):
    in_chans = 3 if family in ("convnext", "swin") else 1
    objective = build(family, in_chans=in_chans)
    image, mask, scribbled = inputs(family, in_chans=in_chans)
    for train in (True, False):  # train mode: BatchNorm uses batch statistics
        objective.train(train)
        with torch.no_grad():
            before, after = encode(objective, image, mask), encode(objective, scribbled, mask)
            assert torch.allclose(before, after, rtol=0, atol=1e-6), (train, (before - after).abs().max())
            # only the reconstruction target changes
            out, out2 = objective.forward_masked(image, mask), objective.forward_masked(scribbled, mask)
        assert not torch.equal(out["target"], out2["target"]) and out["loss"] != out2["loss"]


@pytest.mark.parametrize("family", CNNS + ["pvt_v2"])
def test_the_leak_test_fails_without_sparse_masking(family):
    """Switching the family's protection off (sparse hooks/visible stats, or PVT-v2's pixel zeroing) leaks."""
    objective = build(family).train()
    if family == "pvt_v2":
        objective.encoder.zero_masked_pixels = False  # the overlapping 7x7 stem reads masked pixels
    else:
        objective.encoder.masking.enabled = False
    image, mask, scribbled = inputs(family)
    with torch.no_grad():
        assert not torch.allclose(encode(objective, image, mask), encode(objective, scribbled, mask), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_final_stage_cells_coincide_with_mask_cells(family):
    objective = build(family).eval()
    image, mask, _ = inputs(family)
    with torch.no_grad():
        feats = objective.encoder(image, mask)
    per_cell = 32 // objective.encoder.stride  # 1 for stride-32 families, 2x2 tokens for a patch-16 ViT
    assert feats.shape[-2:] == (mask.shape[1] * per_cell, mask.shape[2] * per_cell)
    cell_mask = mask.repeat_interleave(per_cell, 1).repeat_interleave(per_cell, 2)
    if family in CNNS + ["hiera"]:  # sparse CNNs and Hiera's dropped units: masked cells are exactly 0, visible not
        assert torch.equal(feats.abs().amax(1) == 0, cell_mask)
    else:  # tokens replaced right after the patch embedding are exactly those inside masked cells
        enc = objective.encoder
        ts = enc.token_stride
        grid = random_grid_mask(2, (2, 3), 0.5, generator=torch.Generator().manual_seed(4))
        expected = grid.repeat_interleave(32 // ts, 1).repeat_interleave(32 // ts, 2)
        token = enc.mask_token.view(-1)
        nhwc = enc._replace_tokens(torch.ones(2, 64 // ts, 96 // ts, token.numel()), grid, (2, 1, 64, 96))
        assert torch.equal((nhwc == token).all(-1), expected)
        nlc = enc._replace_tokens(torch.ones(2, 64 * 96 // ts**2, token.numel()), grid, (2, 1, 64, 96))
        assert torch.equal((nlc == token).all(-1), expected.flatten(1))


@pytest.mark.parametrize("family", CNNS)
def test_sparse_cnn_sees_only_the_visible_region(family):
    """One visible cell per image: its features, and BatchNorm's running statistics after a training step, equal
    those of the dense CNN run on that 32x32 crop alone (the mask does not fade with depth; masked zeros stay out
    of the statistics)."""
    objective = build(family)
    image = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = mask[1, 1, 0] = False
    crops = torch.stack([image[0, :, :32, 32:], image[1, :, 32:, :32]])
    for train in (False, True):
        objective.train(train)
        reference = copy.deepcopy(objective.backbone)
        with torch.no_grad():
            sparse = objective.encoder(image, mask)
            dense = reference.forward_features(crops)
        assert torch.allclose(sparse[0, :, 0, 1], dense[0, :, 0, 0], rtol=1e-4, atol=1e-4), train
        assert torch.allclose(sparse[1, :, 1, 0], dense[1, :, 0, 0], rtol=1e-4, atol=1e-4), train
    ours, theirs = objective.backbone.model.state_dict(), reference.model.state_dict()
    stats = [k for k in ours if k.endswith(("running_mean", "running_var"))]
    assert stats or family == "convnext"
    for key in stats:
        assert torch.allclose(ours[key], theirs[key], atol=1e-5), key


def test_batchnorm_running_stats_by_hand():
    """ResNet-D's first BatchNorm after one masked step: momentum 0.1 towards mean / unbiased variance of the stem
    conv output over visible positions only (16x16 blocks at stride 2)."""
    objective = build("resnet_d").train()
    model = objective.backbone.model
    image, mask, _ = inputs("resnet_d")
    with torch.no_grad():
        conv = model.conv1[0](image * (1 - mask_to_pixels(mask)))  # the sparse forward zeroes its input under the mask
        objective.encoder(image, mask)
    visible = ~mask.repeat_interleave(16, 1).repeat_interleave(16, 2)  # (2, 32, 48)
    values = conv.permute(1, 0, 2, 3)[:, visible]  # (C, visible positions)
    bn = model.conv1[1]  # deep stem: conv1 = (conv, bn, act, conv, bn, act, conv)
    assert torch.allclose(bn.running_mean, 0.1 * values.mean(1), atol=1e-6)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * values.var(1, unbiased=True), atol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    everything = conv.permute(1, 0, 2, 3).flatten(1)  # what a dense BatchNorm would have averaged
    assert not torch.allclose(bn.running_mean, 0.1 * everything.mean(1), atol=1e-4)


def train_losses(objective: MaskedImageModelling, family: str, steps: int = 8) -> list[float]:
    """Losses of a few AdamW steps on one fixed batch of smooth images and one fixed mask.

    Last loss / first loss after 8 steps, measured over the test's seeds shifted by 0-4 (model init and data) on
    an AVX-512 Xeon: resnet_d 0.29-0.35, swin 0.43-0.53, gresnet 0.56-0.59, convnext 0.64-0.66, swinv2 0.64-0.69,
    pvt_v2 0.76-0.83, hiera 0.73-0.81, vit 0.83-0.89, convnext + U-Net decoder 0.80-0.92. Emulating another CPU's
    kernels (ATEN_CPU_CAPABILITY=avx2|default with ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS to match) moved
    the losses by < 1e-6. After 4 steps hiera's loss was still within 3% of where it started (above it for one
    seed), hence 8 steps and the bound 0.97, which a model that learns nothing (ratio 1.0) fails.
    """
    image, mask, _ = inputs(family, seed=5)
    image = torch.nn.functional.interpolate(image[..., ::8, ::8], size=image.shape[-2:], mode="bilinear")
    optimiser = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        torch.manual_seed(2)
        loss = objective.forward_masked(image, mask)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_few_steps_lower_the_loss(family):
    losses = train_losses(build(family, loss="mse" if family in ("resnet_d", "swin") else "l1").train(), family)
    assert losses[-1] < 0.97 * losses[0], losses


def test_unet_decoder_trains_and_keeps_the_leak_test():
    objective = build("convnext", decoder="unet", decoder_width=32).train()
    image, mask, scribbled = inputs("convnext")
    with torch.no_grad():
        assert torch.equal(objective.predict(image, mask), objective.predict(scribbled, mask))
    losses = train_losses(objective, "convnext")
    assert losses[-1] < 0.97 * losses[0], losses


@pytest.mark.parametrize("family", list(FAMILIES))
def test_backbone_keeps_timm_keys_and_exports_alone(family):
    name, args, size = FAMILIES[family]
    plain = TimmBackbone(name, in_chans=1, img_size=size, model_args=args).model.state_dict()
    objective = build(family)
    exported = objective.export_encoder().model.state_dict()
    assert list(exported) == list(plain)
    extra = {k.split(".")[0] for k in objective.state_dict() if not k.startswith("backbone.")}
    assert extra <= {"encoder", "decoder"}  # mask tokens and decoder live on the objective, never in the backbone


def test_gradient_checkpointing_gives_the_same_sparse_gradients():
    image, mask, _ = inputs("gresnet")
    grads = []
    for checkpointing in (False, True):
        objective = build("gresnet").train()
        objective.backbone.set_grad_checkpointing(checkpointing)
        objective.forward_masked(image, mask)["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in objective.backbone.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    modules = list(objective.backbone.modules())  # hooks and visible-only BatchNorm forwards gone after backward
    assert all(not m._forward_pre_hooks and "forward" not in m.__dict__ for m in modules)


@pytest.mark.parametrize("family", ["convnext", "hiera", "swin"])
def test_every_parameter_gets_a_gradient_and_the_backbone_is_held_once(family):
    """DDP needs no unused parameters; the encoder holds the backbone by reference (no duplicate keys)."""
    objective = build(family).train()
    image, mask, _ = inputs(family)
    objective.forward_masked(image, mask)["loss"].backward()
    unused = [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused
    assert all(not k.startswith("encoder.backbone") for k in objective.state_dict())
