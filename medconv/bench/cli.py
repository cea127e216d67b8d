"""`medconv bench <name>`: what a user runs to measure their own setup; one module per benchmark, each with
`main(argv) -> int`. Peer comparisons and evidence harnesses are scripts in the checkout's benchmarks/ folder."""

from __future__ import annotations

import sys

from medconv.commands import dispatch

BENCHMARKS = {
    "train-overhead": ("medconv.bench.train_overhead", "LightningModule vs bare PyTorch loop, images/s and ratio."),
    "tiles": ("medconv.bench.tiles", "Tile reading: OpenSlide vs medconv reader vs raw decode limit."),
    "infer": ("medconv.bench.infer", "Slide inference: loader vs model vs end-to-end tiles/s, slides/hour at 20x."),
    "gpu": ("medconv.bench.gpu", "Every GPU goal and the CUDA tests in one call; writes gpu_report.md."),
}
# Former `medconv bench` commands, now scripts in benchmarks/ of a medconv checkout (not installed).
MOVED = {"models": "models.py", "gresnet-fuse": "gresnet_fuse.py", "ssl": "ssl_overhead.py"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MOVED:
        command = " ".join(["python", f"benchmarks/{MOVED[argv[0]]}", *argv[1:]])
        print(f"medconv bench {argv[0]} is now a script of the medconv repository (not installed): from a checkout, "
              f"run `{command}` (see benchmarks/README.md).", file=sys.stderr)
        return 2
    return dispatch(argv, BENCHMARKS, prog="medconv bench")
