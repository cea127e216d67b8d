"""`python benchmarks/infer_vs_wsinfer.py`: `medconv bench infer` and wsinfer 0.6.1 on the same slide.

wsinfer (patch classification on WSIs with QuPath GeoJSON output; reads through tiffslide) runs offline on the
same slide, tile size, mpp, workers, batch size and model: once with a near-empty model (its loader) and once
with the checkpoint's model exported to TorchScript (its end to end), beside medconv's loader, model and
per-slide figures from `medconv bench infer`.

wsinfer needs `zarr<3`, which medconv does not, so it lives in its own virtual environment, made on first use
(`pip install wsinfer==0.6.1 "zarr<3"`, the one step that needs the package index). The environment sees
medconv's own site-packages through a .pth file, so it shares this torch (pinned) instead of downloading
another. wsinfer's CLI loads its model-zoo registry from the Hugging Face hub when imported: the driver below
stubs that with an empty registry and runs a local TorchScript export of the medconv model (`--model-path`,
`--config`), and times wsinfer's own stages (patching, inference, GeoJSON) from inside its process.

    python benchmarks/infer_vs_wsinfer.py --slide SLIDE --model convnext_atto --batch-size 64 --slides 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medconv.bench import infer
from medconv.io.atomic import write_json
from medconv.runs import load_run

WSINFER = "wsinfer==0.6.1"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medconv" / "wsinfer-0.6.1-venv"

DRIVER = r"""
import json, sys, time
import wsinfer_zoo.client as zoo
zoo.load_registry = lambda registry_file=None: zoo.ModelRegistry(models={})  # offline: no hub look-up
import wsinfer.cli.infer as infer
timings = {}
def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[name] = time.perf_counter() - start
    return wrapper
infer.segment_and_patch_directory_of_slides = timed("patching", infer.segment_and_patch_directory_of_slides)
infer.run_inference = timed("inference", infer.run_inference)
infer.write_geojsons = timed("geojson", infer.write_geojsons)
timings_path = sys.argv[1]
try:
    infer.run.main(sys.argv[2:], standalone_mode=False)
finally:
    with open(timings_path, "w") as f:
        json.dump(timings, f)
"""


def ensure_venv(path: Path = DEFAULT_VENV) -> Path:
    """The peer's python, creating its environment when missing."""
    python = path / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import wsinfer, zarr"], capture_output=True).returncode == 0:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "_medconv_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # share torch & co.
    pins = path / "constraints.txt"
    pins.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "-c", str(pins), WSINFER, "zarr<3"], check=True)
    return python


class _Logits(nn.Module):
    """The classifier as wsinfer calls it: logits of a normalised batch. A plain module holding the
    ClassificationModule's backbone and head (a LightningModule cannot be traced outside a Trainer)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.backbone, self.head = module.backbone, module.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class NearEmpty(nn.Module):
    """A model that costs nothing: the run then times the loader (reading, transforms, batching)."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def export_torchscript(module: nn.Module, path: Path, image_size: tuple[int, int]) -> Path:
    """Trace `module` (eval, CPU, fp32) to TorchScript, as wsinfer's `--model-path` expects."""
    module = module.eval().cpu()
    with torch.no_grad():
        traced = torch.jit.trace(_Logits(module) if not isinstance(module, NearEmpty) else module,
                                 torch.randn(2, 3, *image_size))
    traced.save(str(path))
    return path


def wsinfer_config(classes: list[str], tile_size: int, target_mpp: float, image_size: tuple[int, int],
                   mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """wsinfer's model config: the same tile size, mpp, resize and normalisation as medconv's inference."""
    transform: list[dict[str, Any]] = []
    if tuple(image_size) != (tile_size, tile_size):
        transform.append({"name": "Resize", "arguments": {"size": list(image_size)}})
    transform += [{"name": "ToTensor"}, {"name": "Normalize", "arguments": {"mean": list(mean), "std": list(std)}}]
    return {"spec_version": "1.0", "architecture": "medconv-export", "num_classes": len(classes), "class_names": list(classes),
            "patch_size_pixels": int(tile_size), "spacing_um_px": float(target_mpp), "transform": transform}


def run_wsinfer(python: Path, slide: Path, model_path: Path, config: dict[str, Any], work: Path, batch_size: int,
                workers: int) -> dict[str, Any]:
    """Run wsinfer on one slide; its stage times (s), tile count and the command's wall time."""
    work.mkdir(parents=True, exist_ok=True)
    slides = work / "slides"
    slides.mkdir(exist_ok=True)
    link = slides / slide.name
    if not link.exists():
        link.symlink_to(slide.resolve())
    (work / "config.json").write_text(json.dumps(config))
    (work / "driver.py").write_text(DRIVER)
    results = work / "results"
    cmd = [str(python), str(work / "driver.py"), str(work / "timings.json"), "--wsi-dir", str(slides), "--results-dir",
           str(results), "--model-path", str(model_path), "--config", str(work / "config.json"), "--batch-size",
           str(batch_size), "--num-workers", str(workers)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"wsinfer failed ({done.returncode}): {done.stderr[-2000:]}")
    timings = json.loads((work / "timings.json").read_text())
    import h5py

    with h5py.File(next((results / "patches").glob("*.h5")), "r") as f:
        n = int(f["coords"].shape[0])
    stages = sum(timings.get(k, 0.0) for k in ("patching", "inference", "geojson"))
    return {"tiles": n, "wall_s": wall, **{f"{k}_s": v for k, v in timings.items()}, "stages_s": stages,
            "inference_tiles_per_s": n / timings["inference"], "stages_tiles_per_s": n / stages}


def run_peer(python: Path, args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """wsinfer on the slide `medconv bench infer` measured, with its tile size, mpp, workers and batch size: with a
    near-empty model (its loader) and with the checkpoint's model exported to TorchScript (its end to end)."""
    loaded = load_run(args.ckpt)
    tile_size, target_mpp = result["tile_size"], result["target_mpp"]
    config = wsinfer_config(loaded.classes, tile_size, target_mpp, loaded.image_size, loaded.mean, loaded.std)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medconv-bench-wsinfer-") as tmp:
        tmp = Path(tmp)
        for name, module in (("loader", NearEmpty(len(loaded.classes))), ("model", loaded.module)):
            path = export_torchscript(module, tmp / f"{name}.pt", loaded.image_size)
            out[name] = run_wsinfer(python, args.slide, path, config, tmp / name, args.batch_size, result["workers"])
    return out


def peer_report(r: dict[str, Any]) -> str:
    """The wsinfer lines below `medconv bench infer`'s report: each figure as medconv's over wsinfer's."""
    w = r["wsinfer"]
    loader, e2e = w["loader"]["inference_tiles_per_s"], w["model"]["stages_tiles_per_s"]
    return "\n".join([
        f"  wsinfer 0.6.1 on the same slide ({w['model']['tiles']} tiles from its own tissue mask), same model, "
        f"workers, batch size:",
        f"    loader (near-empty model)  {loader:8.1f} tiles/s  -> medconv loader {r['loader']['tiles_per_s'] / loader:.2f}x",
        f"    end to end (its patching + inference + GeoJSON) {e2e:8.1f} tiles/s  -> medconv per slide "
        f"{r['end_to_end']['slide_tiles_per_s'] / e2e:.2f}x; its inference stage alone "
        f"{w['model']['inference_tiles_per_s']:.1f} tiles/s ({w['model']['inference_tiles_per_s'] / r['model']['tiles_per_s']:.2f} "
        f"of the model bound); whole command {w['model']['tiles'] / w['model']['wall_s']:.1f} tiles/s",
    ])


def build_parser() -> argparse.ArgumentParser:
    """`medconv bench infer`'s options (wsinfer runs fp32: `--precision 32-true` compares like with like), plus where
    wsinfer's environment lives."""
    parser = infer.build_parser()
    parser.prog, parser.description = "python benchmarks/infer_vs_wsinfer.py", __doc__.splitlines()[0]
    parser.add_argument("--peer-venv", type=Path, default=DEFAULT_VENV,
                        help=f"wsinfer's virtual environment, made here on first use (default {DEFAULT_VENV})")
    parser.add_argument("--setup-only", action="store_true", help="make wsinfer's environment and stop (no other "
                        "option needed but --peer-venv)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--setup-only" in argv:
        setup = argparse.ArgumentParser(add_help=False)
        setup.add_argument("--peer-venv", type=Path, default=DEFAULT_VENV)
        print(ensure_venv(setup.parse_known_args(argv)[0].peer_venv))
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.slides < 1:
        parser.error("--rounds and --slides must be at least 1")
    python = ensure_venv(args.peer_venv)  # first: a failed install costs seconds, not a whole measurement
    with tempfile.TemporaryDirectory(prefix="medconv-bench-model-") as tmp:
        if args.ckpt is None:
            args.ckpt = infer.random_run(args.model, args.tile_size or 224, args.target_mpp or 0.5, Path(tmp))
        result = infer.run(args)
        result["wsinfer"] = run_peer(python, args, result)
    print(infer.report(result))
    print(peer_report(result))
    if args.json:
        write_json(args.json, result)
    return 0 if result["end_to_end"]["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
