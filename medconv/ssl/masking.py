"""One mask for every family: drawn on the stride-32 grid, so a masked cell is one final-stage cell everywhere.

Pure functions: masks are bool tensors (B, gh, gw), True = masked; helpers blow them up to any stage's
resolution or to pixels. A mask unit of 32 px matches the last stage of ConvNeXt, ResNet-D, GResNet, Swin,
PVT-v2 and Hiera (stride 32), and 2x2 tokens of a patch-16 ViT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medconv.errors import ConfigError

MASK_STRIDE = 32  # pixels per mask cell = the final-stage stride of the hierarchical families


def grid_shape(img_size: tuple[int, int], stride: int = MASK_STRIDE) -> tuple[int, int]:
    """(gh, gw) cells of the mask grid for an (H, W) input; sizes must be multiples of `stride`."""
    h, w = (int(s) for s in img_size)
    if h <= 0 or w <= 0 or h % stride or w % stride:
        raise ConfigError(
            f"masked image modelling: img_size {h}x{w} must be a positive multiple of {stride} per side "
            f"(one mask cell = one stride-{stride} final-stage cell); resize or crop the pretraining images, "
            f"e.g. to {max(stride, h // stride * stride)}x{max(stride, w // stride * stride)}."
        )
    return h // stride, w // stride


def num_masked(cells: int, ratio: float) -> int:
    """Masked cells per image: round(ratio * cells), kept within [1, cells - 1] so both parts are non-empty."""
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"mask_ratio must lie strictly between 0 and 1; got {ratio}.")
    if cells < 2:
        raise ConfigError(f"masked image modelling needs at least 2 mask cells per image; the grid has {cells}.")
    return min(max(round(ratio * cells), 1), cells - 1)


def random_grid_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float = 0.6,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, gh, gw) bool, True = masked, exactly `num_masked` cells per image, uniformly at random.

    The noise is drawn on the generator's device (CPU when none is given), so a seeded CPU generator gives
    the same mask whatever device the batch lives on.
    """
    gh, gw = grid
    cells = gh * gw
    k = num_masked(cells, ratio)
    noise_device = generator.device if generator is not None else "cpu"
    noise = torch.rand(batch, cells, generator=generator, device=noise_device)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, cells, dtype=torch.bool, device=noise_device)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(batch, gh, gw).to(device if device is not None else noise_device)


def upsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, gh, gw) grid mask at (h, w) resolution as (B, 1, h, w) float (1 = masked); sizes must be multiples."""
    gh, gw = mask.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if h % gh or w % gw:
        raise ValueError(f"resolution {h}x{w} is not a multiple of the mask grid {gh}x{gw}")
    m = mask.reshape(mask.shape[0], 1, gh, gw).float()
    return m if (h, w) == (gh, gw) else F.interpolate(m, size=(h, w), mode="nearest")


def mask_to_pixels(mask: torch.Tensor, stride: int = MASK_STRIDE) -> torch.Tensor:
    """The grid mask at input-pixel resolution, (B, 1, gh*stride, gw*stride) float, 1 = masked."""
    gh, gw = mask.shape[-2:]
    return upsample_mask(mask, (gh * stride, gw * stride))


def patchify(x: torch.Tensor, patch: int = MASK_STRIDE) -> torch.Tensor:
    """(B, C, H, W) -> (B, gh, gw, C * patch * patch): one row per mask cell (for per-patch normalisation)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, h // patch, w // patch, c * patch * patch)


def unpatchify(x: torch.Tensor, channels: int, patch: int = MASK_STRIDE) -> torch.Tensor:
    """The inverse of `patchify`."""
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh, gw, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, gh * patch, gw * patch)
