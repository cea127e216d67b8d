"""A folder of unlabelled images (PNG, JPEG, TIFF; 8- or 16-bit; grey or RGB) as a pretraining source.

Images are found recursively, checked up front (every unreadable file named in one error), read with OpenCV
(Pillow as a fallback), scaled to [0, 1] by their bit depth, converted to `in_chans` and resized to
`image_size`. The domain augmentation is the project's own: `HEAugment` for H&E tiles, `MammoAugment` for
mammograms or mammogram patches; it is reseeded per draw like every medconv dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medconv import keys
from medconv.data.samplers import decode_draw
from medconv.errors import ConfigError, InputFileError
from medconv.mammo.transforms import MammoAugment, mammo_train_transforms
from medconv.wsi.transforms import IMAGENET_MEAN, IMAGENET_STD, HEAugment, he_train_transforms

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_REPORTED = 20


def read_image(path: str | Path) -> np.ndarray:
    """float32 (H, W) or (H, W, 3) RGB in [0, 1], scaled by the file's bit depth (alpha dropped)."""
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is not None and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if image is None:
        image = _read_pil(path)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or min(image.shape[:2]) == 0:
        raise InputFileError(f"{path}: unsupported image layout {image.shape}; give grey or RGB images.")
    image = image[:, :, :3] if image.ndim == 3 else image
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / float(np.iinfo(image.dtype).max)
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("P", "LA", "RGBA", "CMYK", "YCbCr"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputFileError(f"{path}: not a readable image ({err}); re-export it as PNG, JPEG or TIFF.") from err


def to_channels(image: np.ndarray, in_chans: int, path: str | Path = "") -> np.ndarray:
    """Grey -> (H, W) for 1 channel or (H, W, 3) repeated; RGB -> (H, W, 3) or its luminance for 1 channel."""
    if in_chans == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    if in_chans == 3:
        return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    raise ConfigError(f"image folder {path}: in_chans must be 1 or 3, not {in_chans}")


def find_images(root: str | Path, extensions: tuple[str, ...] = EXTENSIONS) -> list[Path]:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputFileError(f"{root}: image folder not found; give an existing folder of images.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))
    if not files:
        raise InputFileError(f"{root}: no images ({', '.join(extensions)}) in this folder or below it.")
    return files


def check_images(files: list[Path]) -> None:
    """Open every file's header (cheap); one InputFileError lists every file that is not an image."""
    from PIL import Image, UnidentifiedImageError

    problems = []
    for path in files:
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018  (the header parses)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            problems.append(f"{path}: {err}")
    if problems:
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise InputFileError(f"{len(problems)} unreadable image(s); remove or re-export them:\n  " + "\n  ".join(problems[:MAX_REPORTED]) + more)


class FolderDataset(Dataset):
    """Samples `{IMAGE: (in_chans, H, W) float normalised, IMAGE_ID: path, PATIENT_ID: ""}`; no label."""

    def __init__(
        self,
        files: list[Path],
        image_size: tuple[int, int],
        in_chans: int = 3,
        augment: HEAugment | MammoAugment | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
    ):
        if isinstance(augment, HEAugment) and in_chans != 3:
            raise ConfigError(f"HEAugment jitters RGB stains: in_chans must be 3, not {in_chans}")
        self.files = list(files)
        self.image_size = tuple(image_size)
        self.in_chans = in_chans
        self.uint8_augment = isinstance(augment, HEAugment)
        if augment is None:
            self.transform: A.Compose | None = None
        elif isinstance(augment, HEAugment):
            self.transform = he_train_transforms(augment, seed=seed)
        else:
            self.transform = mammo_train_transforms(augment)
        grey = in_chans == 1
        self.mean = np.asarray(mean if mean is not None else (0.5,) if grey else IMAGENET_MEAN, dtype=np.float32)
        self.std = np.asarray(std if std is not None else (0.5,) if grey else IMAGENET_STD, dtype=np.float32)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        """The image in [0, 1] with `in_chans` channels, resized to `image_size` (before augmentation)."""
        path = self.files[index]
        image = to_channels(read_image(path), self.in_chans, path)
        h, w = self.image_size
        if image.shape[:2] != (h, w):
            shrink = image.shape[0] * image.shape[1] > h * w
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return image

    def __getitem__(self, value: int) -> dict[str, Any]:
        index, draw = decode_draw(int(value), len(self.files))
        image = self.load(index)
        if self.transform is not None:
            self.transform.set_random_seed((self.seed * 1_000_003 + draw * 7919 + index) % 2**32)
            if self.uint8_augment:
                image = self.transform(image=np.round(image * 255).astype(np.uint8))["image"].astype(np.float32) / 255.0
            else:
                image = self.transform(image=image)["image"]
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        x = (x - torch.from_numpy(self.mean).view(-1, 1, 1)) / torch.from_numpy(self.std).view(-1, 1, 1)
        return {keys.IMAGE: x.contiguous(), keys.IMAGE_ID: str(self.files[index]), keys.PATIENT_ID: ""}


class ImageFolder:
    """An unlabelled pretraining source: every image under `root` (recursive). No splits, no labels, no probes.

    Args:
        root: the folder; PNG, JPEG and TIFF files (8/16-bit, grey or RGB) anywhere below it are used.
        image_size: (H, W) every image is resized to (the global crop size for multi-crop).
        in_chans: 1 (grey; RGB files converted to luminance) or 3 (grey files repeated).
        augment: `HEAugment` (H&E, RGB) or `MammoAugment` (mammograms), or null for none.
        mean, std: normalisation; default ImageNet's for RGB, 0.5/0.5 for grey (as for mammograms).
    """

    def __init__(
        self,
        root: str,
        image_size: tuple[int, int] = (224, 224),
        in_chans: int = 3,
        batch_size: int = 32,
        num_workers: int = 2,
        augment: HEAugment | MammoAugment | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
        extensions: tuple[str, ...] = EXTENSIONS,
    ):
        if in_chans not in (1, 3):
            raise ConfigError(f"image folder {root}: in_chans must be 1 or 3, not {in_chans}")
        self.root = root
        self.image_size = tuple(image_size)
        self.in_chans = in_chans
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment = augment
        self.mean, self.std = mean, std
        self.seed = seed
        self.extensions = tuple(e.lower() for e in extensions)
        self.datasets: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        """0: no labels, so linear probes and k-NN are skipped."""
        return 0

    @property
    def eval_groups(self) -> dict[str, list[str]]:
        return {}

    def prepare_data(self) -> None:
        check_images(find_images(self.root, self.extensions))

    def setup(self, stage: str | None = None) -> None:
        files = find_images(self.root, self.extensions)
        self.datasets["train"] = FolderDataset(files, self.image_size, self.in_chans, self.augment, self.mean, self.std, self.seed)
