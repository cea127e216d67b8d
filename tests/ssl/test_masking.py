"""The stride-32 mask: exact counts, reproducibility, alignment of pixel blocks and stage resolutions."""

import pytest
import torch

from medconv.errors import ConfigError
from medconv.ssl.masking import grid_shape, mask_to_pixels, num_masked, patchify, random_grid_mask, unpatchify, upsample_mask


def test_grid_shape_accepts_multiples_of_32_and_names_the_fix():
    assert grid_shape((64, 96)) == (2, 3)
    with pytest.raises(ConfigError, match=r"64x80 must be a positive multiple of 32.*64x64"):
        grid_shape((64, 80))


@pytest.mark.parametrize(("cells", "ratio", "expected"), [(6, 0.6, 4), (4, 0.6, 2), (100, 0.6, 60), (4, 0.99, 3), (4, 0.01, 1)])
def test_num_masked_rounds_and_keeps_both_parts(cells, ratio, expected):
    assert num_masked(cells, ratio) == expected


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1])
def test_ratio_outside_0_1_is_a_config_error(ratio):
    with pytest.raises(ConfigError, match="mask_ratio"):
        num_masked(4, ratio)


def test_random_grid_mask_exact_count_per_image_and_seeded():
    mask = random_grid_mask(16, (4, 5), 0.6, generator=torch.Generator().manual_seed(3))
    assert mask.shape == (16, 4, 5) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [12] * 16
    again = random_grid_mask(16, (4, 5), 0.6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, again)
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 8  # images get their own masks


def test_random_grid_mask_is_uniform_over_cells():
    masks = random_grid_mask(3000, (2, 3), 0.5, generator=torch.Generator().manual_seed(0)).float()
    freq = masks.mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 0.5), atol=0.04)


def test_pixel_mask_blocks_coincide_with_stride_32_cells():
    mask = random_grid_mask(2, (2, 3), 0.6, generator=torch.Generator().manual_seed(1))
    px = mask_to_pixels(mask)
    assert px.shape == (2, 1, 64, 96) and px.dtype == torch.float32
    for i in range(2):
        for r in range(2):
            for c in range(3):
                block = px[i, 0, 32 * r : 32 * r + 32, 32 * c : 32 * c + 32]
                assert torch.all(block == float(mask[i, r, c]))


def test_upsample_to_a_stage_resolution_and_reject_non_multiples():
    mask = torch.tensor([[[True, False], [False, True]]])
    stage = upsample_mask(mask, (8, 8))  # stride 8 on a 64x64 input
    assert stage[0, 0, :4, :4].eq(1).all() and stage[0, 0, :4, 4:].eq(0).all() and stage[0, 0, 4:, 4:].eq(1).all()
    with pytest.raises(ValueError, match="not a multiple"):
        upsample_mask(mask, (7, 8))


def test_patchify_rows_are_the_cells_and_invert():
    x = torch.randn(2, 3, 64, 96)
    cells = patchify(x)
    assert cells.shape == (2, 2, 3, 3 * 32 * 32)
    assert torch.equal(cells[1, 1, 2], x[1, :, 32:64, 64:96].reshape(-1))
    assert torch.equal(unpatchify(cells, 3), x)
