"""What one unlabelled sample becomes for pretraining: one augmented view (masked image modelling) or multi-crop.

The domain augmentation is the source dataset's own training pipeline (H&E: stain/HED jitter, flips, 90°
rotations, blur via `medconv.wsi.HEAugment`; mammograms: intensity, gamma, affine, vertical flips via
`medconv.mammo.MammoAugment`), so pretraining and fine-tuning see the same kind of images and the datasets'
reading, caching and per-draw seeding are reused unchanged. Multi-crop draws the source image `n_global` times
(each draw a different random augmentation, seeded from the sampler's draw so resumed runs replay it), takes a
random-resized global crop of each, and cuts the local crops from those augmented images.
"""

from __future__ import annotations

from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medconv import keys
from medconv.data.samplers import decode_draw
from medconv.errors import ConfigError

ViewMode = Literal["image", "crops"]
#: ids passed through to pretraining batches (for checks and debugging); labels never are
PASSED_KEYS = (keys.IMAGE_ID, keys.PATIENT_ID, keys.SLIDE_ID, keys.X, keys.Y)


def default_local_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """DINO's 96/224 of the global size per side, rounded to a multiple of 32 (the coarsest stride), at least 32."""
    return tuple(max(32, int(round(s * 96 / 224 / 32)) * 32) for s in image_size)


def random_resized_crop(size: tuple[int, int], scale: tuple[float, float], seed: int = 0) -> A.Compose:
    """A crop covering `scale` of the image's area (aspect 3/4..4/3), resized to `size`: area averaging when
    shrinking (no aliasing in small local crops), bilinear otherwise."""
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"crop scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
    shrink = (lo + hi) / 2 < 0.5
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return A.Compose([A.RandomResizedCrop(size=tuple(size), scale=(lo, hi), interpolation=interp, p=1.0)], seed=seed)


def crop_tensor(transform: A.Compose, image: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply an albumentations crop, reseeded, to a (C, H, W) float tensor (any number of channels)."""
    transform.set_random_seed(seed)
    array = image.permute(1, 2, 0).numpy()
    out = transform(image=np.ascontiguousarray(array))["image"]
    if out.ndim == 2:
        out = out[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous()


class ViewDataset(Dataset):
    """Wraps a source training dataset whose samples are `{IMAGE: (C, H, W) float, ...}` and which decodes
    `index + n * draw` values (`medconv.data.samplers.decode_draw`) to seed its augmentation.

    mode "image": the source sample's augmented image as `IMAGE`. mode "crops": `CROPS`, a list of `n_global`
    global crops at `image_size` followed by `n_local` local crops at `local_size`. Labels are dropped.
    """

    def __init__(
        self,
        source: Dataset,
        mode: ViewMode = "crops",
        image_size: tuple[int, int] = (224, 224),
        n_global: int = 2,
        n_local: int = 4,
        local_size: tuple[int, int] | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        seed: int = 0,
    ):
        if mode not in ("image", "crops"):
            raise ConfigError(f"views must be 'image' (masked image modelling) or 'crops' (DINO multi-crop), not {mode!r}")
        if mode == "crops" and (n_global < 1 or n_local < 0 or n_global + n_local < 2):
            raise ConfigError(f"multi-crop needs n_global >= 1 and at least two crops in all; got n_global={n_global}, n_local={n_local}")
        self.source = source
        self.mode = mode
        self.image_size = tuple(image_size)
        self.n_global, self.n_local = n_global, n_local
        self.local_size = tuple(local_size) if local_size is not None else default_local_size(self.image_size)
        self.global_crop = random_resized_crop(self.image_size, tuple(global_scale), seed)
        self.local_crop = random_resized_crop(self.local_size, tuple(local_scale), seed)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, value: int) -> dict[str, Any]:
        if self.mode == "image":
            sample = self.source[value]
            return {keys.IMAGE: sample[keys.IMAGE], **_ids(sample)}
        n = len(self)
        index, draw = decode_draw(int(value), n)
        # Draw k of this sample is the source's draw `draw * n_global + k`: distinct across views, samples and epochs.
        samples = [self.source[index + n * (draw * self.n_global + k)] for k in range(self.n_global)]
        bases = [s[keys.IMAGE] for s in samples]
        crops = [crop_tensor(self.global_crop, bases[k], self._seed(index, draw, k)) for k in range(self.n_global)]
        crops += [
            crop_tensor(self.local_crop, bases[j % self.n_global], self._seed(index, draw, self.n_global + j))
            for j in range(self.n_local)
        ]
        return {keys.CROPS: crops, **_ids(samples[0])}

    def _seed(self, index: int, draw: int, view: int) -> int:
        return int(np.random.SeedSequence([self.seed, index, draw, view]).generate_state(1)[0])


def _ids(sample: dict) -> dict:
    return {k: sample[k] for k in PASSED_KEYS if k in sample}
