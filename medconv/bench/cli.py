"""`medconv bench <name>`: one module per benchmark, each with `main(argv) -> int`."""

from __future__ import annotations

from medconv.cli import dispatch

BENCHMARKS = {
    "train-overhead": ("medconv.bench.train_overhead", "LightningModule vs bare PyTorch loop, images/s and ratio."),
    "tiles": ("medconv.bench.tiles", "Tile reading: OpenSlide vs medconv reader vs raw decode limit."),
    "gresnet-fuse": ("medconv.bench.gresnet_fuse", "GResNet: split-norm vs fused inference, images/s and max abs difference."),
    "models": ("medconv.bench.models", "Backbones x sizes x precision x attention: images/s and peak memory."),
    "ssl": ("medconv.bench.ssl", "Pretraining (MIM/DINO): PretrainModule vs bare PyTorch loop, images/s and ratio; CUDA peak memory."),
    "infer": ("medconv.bench.infer", "Slide inference: loader vs model vs end-to-end tiles/s, slides/hour at 20x."),
    "gpu": ("medconv.bench.gpu", "Every GPU goal and the CUDA tests in one budgeted call; writes gpu_report.md."),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, BENCHMARKS, prog="medconv bench")
