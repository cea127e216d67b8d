"""The masked-modelling loss by hand, the objective's outputs (contract), config errors, export round trip."""

import pytest
import torch
from safetensors.torch import save_file

from medconv import keys
from medconv.errors import ConfigError
from medconv.models import TimmBackbone
from medconv.ssl import MaskedImageModelling
from medconv.ssl.mim import masked_pixel_loss, normalise_patches

pytestmark = pytest.mark.usefixtures("one_thread")

CONVNEXT = ("convnext_atto", {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]})



def convnext(size=(64, 96), in_chans=1, **kwargs) -> MaskedImageModelling:
    torch.manual_seed(0)
    return MaskedImageModelling(TimmBackbone(CONVNEXT[0], in_chans=in_chans, img_size=size, model_args=CONVNEXT[1]), **kwargs)


def test_masked_pixel_loss_by_hand():
    pred = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    target = torch.ones(1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert masked_pixel_loss(pred, target, mask, "l1").item() == pytest.approx((1 + 2) / 2)
    assert masked_pixel_loss(pred, target, mask, "mse").item() == pytest.approx((1 + 4) / 2)
    two = torch.cat([pred, pred + 1], dim=1)  # channels count in the mean: (1 + 2 + 0 + 3) / 4
    assert masked_pixel_loss(two, torch.ones(1, 2, 2, 2), mask, "l1").item() == pytest.approx(1.5)


def test_norm_pix_normalises_each_cell_over_channels_and_pixels():
    image = torch.randn(2, 3, 64, 32) * 5 + 3
    normed, mean, std = normalise_patches(image)
    for b in range(2):
        for r in range(2):
            cell = image[b, :, 32 * r : 32 * r + 32, :]
            expected = (cell - cell.mean()) / (cell.var(unbiased=True) + 1e-6).sqrt()
            assert torch.allclose(normed[b, :, 32 * r : 32 * r + 32, :], expected, atol=1e-5)
            assert mean[b, r, 0, 0].item() == pytest.approx(cell.mean().item(), abs=1e-4)
            assert std[b, r, 0, 0].item() == pytest.approx(cell.std().item(), rel=1e-4)


@pytest.mark.parametrize(("loss", "norm_pix"), [("l1", True), ("mse", True), ("l1", False)])
def test_objective_loss_equals_the_hand_computed_one(loss, norm_pix):
    objective = convnext(loss=loss, norm_pix=norm_pix).eval()
    image = torch.randn(2, 1, 64, 96, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[[True, False, True], [False, True, False]], [[False, False, True], [True, True, True]]])
    with torch.no_grad():
        out = objective.forward_masked(image, mask)
        pred = objective.predict(image, mask)
    total, count = 0.0, 0
    for b in range(2):
        for r in range(2):
            for c in range(3):
                if not mask[b, r, c]:
                    continue
                cell, guess = image[b, :, 32 * r : 32 * r + 32, 32 * c : 32 * c + 32], pred[b, :, 32 * r : 32 * r + 32, 32 * c : 32 * c + 32]
                if norm_pix:
                    cell = (cell - cell.mean()) / (cell.var() + 1e-6).sqrt()
                diff = guess - cell
                total += (diff.abs() if loss == "l1" else diff.square()).sum().item()
                count += cell.numel()
    assert out["loss"].item() == pytest.approx(total / count, rel=1e-5)


def test_outputs_follow_the_contract_and_the_reconstruction_is_in_image_space():
    objective = convnext(in_chans=3).train()
    image = torch.randn(2, 3, 64, 96)
    out = objective({keys.IMAGE: image, keys.LABEL: torch.tensor([0, 1])})
    assert out["loss"].ndim == 0 and out["loss"].requires_grad
    assert out["mask"].shape == (2, 1, 64, 96) and out["target"].shape == out["reconstruction"].shape == image.shape
    assert out["mask"].mean(dim=(1, 2, 3)).tolist() == pytest.approx([4 / 6, 4 / 6])  # round(0.6 * 6) cells
    assert torch.equal(out["target"], image)
    # a perfect norm_pix prediction de-normalises to the image itself
    objective.predict = lambda img, mask: normalise_patches(img)[0]
    perfect = objective.forward_masked(image, torch.zeros(2, 2, 3, dtype=torch.bool) | (torch.arange(3) > 0))
    assert perfect["loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(perfect["reconstruction"], image, atol=1e-4)


def test_export_then_strict_load(tmp_path):
    objective = convnext()
    objective.forward_masked(torch.randn(2, 1, 64, 96), torch.tensor([[[True, False, True], [False, True, False]]] * 2))
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in objective.export_encoder().model.state_dict().items()}, str(path))
    loaded = TimmBackbone(CONVNEXT[0], in_chans=1, model_args=CONVNEXT[1], pretrained_path=str(path), strict_weights=True)
    assert not loaded.weight_report.missing and not loaded.weight_report.unexpected
    for key, value in objective.backbone.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


SWIN = ("swin_tiny_patch4_window7_224", {"depths": [1, 1, 1, 1], "embed_dim": 16, "num_heads": [1] * 4, "window_size": 4})


@pytest.mark.parametrize(
    ("name", "args", "size", "kwargs", "message"),
    [
        (*CONVNEXT, (64, 80), {}, r"64x80 must be a positive multiple of 32"),
        (*SWIN, (64, 96), {}, r"4x6 token grid .* window 4x4 does not tile"),
        ("hiera_tiny_224", {"stages": [1, 1, 1, 1], "embed_dim": 16, "num_heads": 1, "mask_unit_size": [16, 16]}, (128, 128), {},
         r"mask units of 64x64 px"),
        ("vit_tiny_patch16_224", {"depth": 1, "embed_dim": 16, "num_heads": 1, "patch_size": 12}, (48, 48), {}, r"patch stride"),
        (*SWIN, (64, 64), {"decoder": "unet"}, r"decoder 'unet' needs a CNN"),
        ("mobilenetv3_small_050", {}, (64, 64), {}, r"no masked forward for the 'mobilenetv3' family"),
        ("resnet26d", {"layers": [1, 1, 1, 1]}, (64, 64), {"mask_ratio": 1.0}, r"mask_ratio"),
        ("seresnet18", {}, (64, 64), {}, r"SEModule layers pool over all positions"),
    ],
)
def test_sizes_and_models_that_do_not_fit_are_config_errors(name, args, size, kwargs, message):
    backbone = TimmBackbone(name, in_chans=1, img_size=size, model_args=args)
    with pytest.raises(ConfigError, match=message):
        MaskedImageModelling(backbone, **kwargs)


def test_runtime_size_is_checked_when_the_cnn_was_built_without_one():
    objective = MaskedImageModelling(TimmBackbone(CONVNEXT[0], in_chans=1, model_args=CONVNEXT[1]))
    with pytest.raises(ConfigError, match="48x64 must be a positive multiple of 32"):
        objective({keys.IMAGE: torch.randn(1, 1, 48, 64)})
