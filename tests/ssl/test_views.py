"""Multi-crop views: shapes, two differently augmented global views of the same image, replay on resume."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from medconv import keys
from medconv.data.samplers import EpochSeededSampler
from medconv.errors import ConfigError
from medconv.ssl.folder import FolderDataset
from medconv.ssl.views import ViewDataset, default_local_size
from medconv.wsi.transforms import IMAGENET_MEAN, IMAGENET_STD, HEAugment

pytestmark = pytest.mark.usefixtures("one_thread")

# Each image's red channel is one constant of its own (flips, 90° rotations and crops keep it), green and blue
# are gradients (so two crops of one image differ).
RED = [0.1, 0.3, 0.5, 0.7, 0.9]



@pytest.fixture(scope="module")
def signed_images(tmp_path_factory: pytest.TempPathFactory) -> list:
    root = tmp_path_factory.mktemp("signed")
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32) / 95
    files = []
    for i, red in enumerate(RED):
        rgb = np.stack([np.full_like(xx, red), xx, yy * (i + 1) / len(RED)], axis=2)
        path = root / f"img{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(np.round(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        files.append(path)
    return files


def _source(files, augment=None) -> FolderDataset:
    return FolderDataset(files, (64, 64), 3, augment or HEAugment(stain=0, color=0, blur=0), seed=0)


def _red(x: torch.Tensor) -> torch.Tensor:
    """The red channel back on the [0, 1] scale."""
    return x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]


def test_local_size_default():
    assert default_local_size((224, 224)) == (96, 96)
    assert default_local_size((64, 64)) == (32, 32)
    assert default_local_size((2048, 1024)) == (864, 448)


def test_multi_crop_shapes_and_provenance(signed_images):
    views = ViewDataset(_source(signed_images), "crops", (64, 64), n_global=2, n_local=3, local_size=(32, 32))
    n = len(views)
    for index in range(n):
        sample = views[index + n * 7]  # draw 7 of image `index`
        crops = sample[keys.CROPS]
        assert [tuple(c.shape) for c in crops] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 3
        assert keys.LABEL not in sample and sample[keys.IMAGE_ID].endswith(f"img{index}.png")
        for crop in crops:  # every crop comes from this image: its red constant
            torch.testing.assert_close(_red(crop), torch.full(crop.shape[1:], RED[index]), atol=2 / 255, rtol=0)
        assert not torch.allclose(crops[0], crops[1], atol=0.05)  # two differently augmented global views


def test_views_replay_and_differ_between_draws(signed_images):
    views = ViewDataset(_source(signed_images), "crops", (64, 64), n_global=2, n_local=2)
    again = ViewDataset(_source(signed_images), "crops", (64, 64), n_global=2, n_local=2)
    a, b, c = views[3], again[3], views[3 + len(views)]  # same value twice (a resumed run), then the next draw
    for x, y in zip(a[keys.CROPS], b[keys.CROPS], strict=True):
        torch.testing.assert_close(x, y)
    assert not torch.allclose(a[keys.CROPS][0], c[keys.CROPS][0])


def test_views_across_an_epoch_collate(signed_images):
    views = ViewDataset(_source(signed_images), "crops", (64, 64), n_global=2, n_local=1)
    loader = torch.utils.data.DataLoader(views, batch_size=2, sampler=EpochSeededSampler(len(views), seed=1))
    batch = next(iter(loader))
    assert isinstance(batch[keys.CROPS], list) and len(batch[keys.CROPS]) == 3
    assert batch[keys.CROPS][0].shape == (2, 3, 64, 64) and batch[keys.CROPS][2].shape == (2, 3, 32, 32)


def test_image_mode_is_the_source_view(signed_images):
    source = _source(signed_images)
    views = ViewDataset(source, "image", (64, 64))
    sample = views[2]
    assert set(sample) == {keys.IMAGE, keys.IMAGE_ID, keys.PATIENT_ID}
    torch.testing.assert_close(sample[keys.IMAGE], source[2][keys.IMAGE])


def test_bad_view_settings(signed_images):
    with pytest.raises(ConfigError, match="views must be"):
        ViewDataset(_source(signed_images), "pairs")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="two crops"):
        ViewDataset(_source(signed_images), "crops", n_global=1, n_local=0)
    with pytest.raises(ConfigError, match="crop scale"):
        ViewDataset(_source(signed_images), "crops", local_scale=(0.5, 0.1))
