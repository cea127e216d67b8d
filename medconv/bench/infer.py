"""`medconv bench infer --slide PATH --ckpt CKPT`: where slide inference spends its time.

Three figures, so the bottleneck is visible: loader tiles/s (the `SlideStream` `medconv infer` reads with:
the fast reader, resize, uint8 batches from DataLoader workers, no model; also with the tissue grid's time),
model tiles/s (the checkpoint's model on a batch of the slide's tiles held in memory, with the precision and memory format
`medconv infer` uses), and end-to-end tiles/s (`medconv infer` itself: tiling, reading, model, heatmap/GeoJSON/h5
writing). They are measured in turn for `--rounds` rounds and each ratio is taken within its round (medians
reported), because on a small shared VM the model figure alone moved by 10-50% between two measurements a
minute apart. Also
slides/hour for a typical 20x slide (100k x 80k px at 0.5 um/px) extrapolated from end-to-end tiles/s and this
slide's tissue fraction."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medconv import keys
from medconv.io.atomic import write_json
from medconv.tiling.coords_store import read_coords

TYPICAL_SLIDE = (100_000, 80_000, 0.5)  # width, height (px), mpp: a 20x scan


def loader_rate(slide: Path, coords_h5: Path, loaded: Any, batch_size: int, workers: int, max_tiles: int | None,
                slide_mpp: float | None, backend: str = "auto", copies: int = 1) -> dict[str, float]:
    """Tiles/s of the loader `medconv infer` uses (`SlideStream` in DataLoader workers: reads through the fast
    reader, resize, uint8 batches), on a slide already tiled (read `copies` times, one stream), no model; the first
    `max_tiles` tiles if given."""
    from medconv.slides.stream import SlideBoard, SlideStream, StreamLoader

    _, attrs = read_coords(coords_h5)
    board = SlideBoard(copies)
    for k in range(copies):
        board.ready(k, int(attrs["n_tiles"]))
    stream = SlideStream([(f"{slide.stem}_{k}", slide, coords_h5, slide_mpp) for k in range(copies)], board, loaded.image_size, batch_size, backend=backend)
    loader = StreamLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                          on_start=lambda: None)
    n, start = 0, time.perf_counter()
    for batch in loader:
        if keys.ERROR in batch:
            raise RuntimeError(f"{slide}: the loader could not read its tiles: {batch[keys.ERROR]}")
        n += len(batch["image"])
        if max_tiles and n >= max_tiles:
            break
    seconds = time.perf_counter() - start
    return {"tiles": n, "seconds": seconds, "tiles_per_s": n / seconds}


def slide_batch(slide: Path, coords_h5: Path, loaded: Any, batch_size: int, slide_mpp: float | None) -> torch.Tensor:
    """A batch of the slide's own tiles, from the middle of its grid, for the model bound: the model's speed can
    depend on what it sees (convnext_atto ran 20-35% faster on demo H&E tiles than on uniform noise, bf16 on a
    2-core CPU; resnet18d alike on both), so noise would understate the bound."""
    from medconv.slides.stream import read_batch
    from medconv.slides.tile_module import InferenceTiles
    from medconv.wsi.tile_dataset import load_slide_tiles

    tiles = load_slide_tiles(slide, coords_h5, 0, mpp=slide_mpp)
    dataset = InferenceTiles([tiles], None, loaded.image_size)
    try:
        start = max(len(tiles.coords) // 2 - batch_size // 2, 0)
        return read_batch(dataset, start, min(start + batch_size, len(tiles.coords)))
    finally:
        dataset.close()


def model_rate(loaded: Any, images: torch.Tensor, device: torch.device, precision: str,
               min_seconds: float = 3.0) -> dict[str, float]:
    """Tiles/s of the model on one in-memory uint8 batch (`slide_batch`), repeated (after warm-up), under the
    inference precision, normalisation and softmax included (what `medconv infer` runs per batch)."""
    from medconv.inference.slide_scores import TilePredictor

    module = TilePredictor(loaded.module, loaded.mean, loaded.std).to(device).eval()
    x, batch_size = images.to(device), len(images)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
    with torch.inference_mode(), autocast:
        for _ in range(2):
            probs = module(x)
        _sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds or n < 3 * batch_size:
            module(x).cpu()
            n += batch_size
        _sync(device)
        seconds = time.perf_counter() - start
    with torch.inference_mode():  # what the precision costs in the scores themselves
        deviation = float((probs.float() - module(x)).abs().max()) if dtype is not None else 0.0
    return {"tiles": n, "seconds": seconds, "tiles_per_s": n / seconds, "max_abs_prob_diff_vs_fp32": deviation}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def slides_per_hour(tiles_per_s: float, tissue_fraction: float, tile_size: int, target_mpp: float,
                    slide: tuple[int, int, float] = TYPICAL_SLIDE) -> tuple[float, float]:
    """(tiles on the typical slide, slides/hour) at `tiles_per_s` with this tissue fraction."""
    width, height, mpp = slide
    side_um = tile_size * target_mpp
    tiles = (width * mpp / side_um) * (height * mpp / side_um) * tissue_fraction
    return tiles, 3600.0 * tiles_per_s / max(tiles, 1.0)


def random_run(name: str, tile_size: int, target_mpp: float, folder: Path) -> Path:
    """A run directory (config.yaml + checkpoint) of timm model `name` with random weights, for speed only."""
    import yaml

    from medconv.models import TimmBackbone
    from medconv.tasks import ClassificationModule

    backbone = {"name": name, "channels_last": False}
    config = {"model": {"class_path": "medconv.tasks.ClassificationModule",
                        "init_args": {"backbone": {"class_path": "medconv.models.TimmBackbone", "init_args": backbone}}},
              "data": {"class_path": "medconv.wsi.WSITileDataModule",
                       "init_args": {"image_size": [tile_size, tile_size], "tile_size": tile_size, "target_mpp": target_mpp,
                                     "classes": ["normal", "tumor"]}}}
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    module = ClassificationModule(TimmBackbone(img_size=(tile_size, tile_size), **backbone), num_classes=2)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"num_classes": 2}}, folder / "checkpoints" / "model.ckpt")
    return folder


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.ckpt is None:
        with tempfile.TemporaryDirectory(prefix="medconv-bench-model-") as tmp:
            args.ckpt = random_run(args.model, args.tile_size or 224, args.target_mpp or 0.5, Path(tmp))
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from medconv.precision import inference_precision
    from medconv.runs import load_run
    from medconv.slides.loader_workers import loader_workers
    from medconv.tiling.slide_tiler import TileOptions, tile_slide

    loaded = load_run(args.ckpt)
    tile_size, target_mpp = args.tile_size or loaded.tile_size, args.target_mpp or loaded.target_mpp
    device = torch.device("cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu")
    accelerator = "cpu" if device.type == "cpu" else "gpu"
    precision = args.precision or inference_precision(accelerator)
    workers = loader_workers(args.num_workers, accelerator, 1)  # what `medconv infer` would use here
    out: dict[str, Any] = {"slide": str(args.slide), "backbone": loaded.module.backbone.name, "tile_size": tile_size,
                           "target_mpp": target_mpp, "image_size": list(loaded.image_size), "batch_size": args.batch_size,
                           "workers": workers, "workers_requested": str(args.num_workers), "device": str(device),
                           "precision": precision, "torch_threads": torch.get_num_threads(), "rounds": []}
    with tempfile.TemporaryDirectory(prefix="medconv-bench-infer-") as tmp:
        tmp = Path(tmp)
        coords = tmp / "coords" / f"{args.slide.stem}.h5"
        start = time.perf_counter()
        tile_slide(args.slide, coords.parent, args.slide.stem, TileOptions(target_mpp=target_mpp, tile_size=tile_size,
                                                                          slide_mpp=args.slide_mpp))
        out["grid_seconds"] = time.perf_counter() - start
        _, attrs = read_coords(coords)
        out["n_tiles"] = int(attrs["n_tiles"])
        area_mm2 = attrs["slide_width"] * attrs["slide_height"] * attrs["slide_mpp"] ** 2 / 1e6
        out["tissue_fraction"] = float(attrs["tissue_mm2"]) / area_mm2
        images = slide_batch(args.slide, coords, loaded, args.batch_size, args.slide_mpp)
        # rounds of loader, model, end to end back to back: the ratios are taken within a round, so a machine
        # whose speed drifts (shared cores, boost clocks) moves both sides of a ratio together
        for r in range(args.rounds):
            loader = loader_rate(args.slide, coords, loaded, args.batch_size, workers, args.max_tiles, args.slide_mpp,
                                 copies=args.slides)
            loader["tiles_per_s_with_grid"] = out["n_tiles"] / (out["grid_seconds"] + out["n_tiles"] / loader["tiles_per_s"])
            before = model_rate(loaded, images, device, precision, args.min_seconds / 2)
            e2e = end_to_end(args, tmp / f"infer_{r}", out["n_tiles"], workers, tile_size, target_mpp, device, precision)
            after = model_rate(loaded, images, device, precision, args.min_seconds / 2)
            model = _bracketed(before, after)
            out["rounds"].append({"loader": loader, "model": model, "end_to_end": e2e,
                                  "e2e_over_model": e2e["tiles_per_s"] / model["tiles_per_s"],
                                  "slide_over_model": e2e["slide_tiles_per_s"] / model["tiles_per_s"]})
    rounds = out["rounds"]
    for part in ("loader", "model", "end_to_end"):  # the median round's figures (by each figure's own median)
        out[part] = {key: float(np.median([r[part][key] for r in rounds])) for key in rounds[0][part]}
    out["end_to_end"]["exit"] = max(int(r["end_to_end"]["exit"]) for r in rounds)
    for ratio in ("e2e_over_model", "slide_over_model"):
        values = [r[ratio] for r in rounds]
        out[ratio], out[f"{ratio}_range"] = float(np.median(values)), [min(values), max(values)]
    e2e = out["end_to_end"]["tiles_per_s"]
    out["typical_slide_tiles"], out["slides_per_hour"] = slides_per_hour(e2e, out["tissue_fraction"], tile_size, target_mpp)
    return out


def _bracketed(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The model bound of a round: measured just before and just after its end-to-end run, pooled, so a drift in
    the machine's speed during the run moves the bound with it."""
    tiles, seconds = before["tiles"] + after["tiles"], before["seconds"] + after["seconds"]
    return {"tiles": tiles, "seconds": seconds, "tiles_per_s": tiles / seconds, "tiles_per_s_before": before["tiles_per_s"],
            "tiles_per_s_after": after["tiles_per_s"],
            "max_abs_prob_diff_vs_fp32": max(before["max_abs_prob_diff_vs_fp32"], after["max_abs_prob_diff_vs_fp32"])}


def end_to_end(args: argparse.Namespace, out_dir: Path, n_tiles: int, workers: int, tile_size: int, target_mpp: float,
               device: torch.device, precision: str) -> dict[str, float]:
    """`medconv infer` itself (tiling the slide again, as a user's run does) over a folder of `--slides` links to
    the slide: the whole command's tiles/s, and the slides' own (the sum of their summary.csv seconds: tiling,
    reading, model, writing, each slide's tiling hidden behind the previous one's scoring where it can be; not
    process start-up or model loading)."""
    from medconv.inference.cli import main as infer_main

    folder = out_dir.with_name(out_dir.name + "_slides")
    folder.mkdir()
    for k in range(args.slides):
        (folder / f"{args.slide.stem}_{k:03d}{args.slide.suffix}").symlink_to(args.slide.resolve())
    argv = [str(args.ckpt), str(folder), "--out", str(out_dir), "--batch-size", str(args.batch_size),
            "--num-workers", str(workers), "--accelerator", device.type if device.type == "cpu" else "gpu"]
    argv += ["--target-mpp", str(target_mpp), "--tile-size", str(tile_size), "--precision", precision]
    argv += ["--slide-mpp", str(args.slide_mpp)] if args.slide_mpp else []
    start = time.perf_counter()
    code = infer_main(argv)
    seconds = time.perf_counter() - start
    rows = pd.read_csv(out_dir / "summary.csv")
    tiles = n_tiles * args.slides
    return {"tiles": tiles, "slides": args.slides, "seconds": seconds, "tiles_per_s": tiles / seconds, "exit": code,
            "slide_seconds": float(rows["seconds"].sum()), "slide_tiles_per_s": tiles / float(rows["seconds"].sum()),
            "failed": int((rows["status"] != "ok").sum())}


def _folder(r: dict[str, Any]) -> str:
    n = int(r["end_to_end"].get("slides", 1))
    return f" over a folder of {n} links to the slide" if n > 1 else ""


def _ratio(r: dict[str, Any], key: str) -> str:
    low, high = r[f"{key}_range"]
    return f"{r[key]:.2f}" + (f", {low:.2f}-{high:.2f} over {len(r['rounds'])} rounds" if len(r["rounds"]) > 1 else "")


def report(r: dict[str, Any]) -> str:
    lines = [
        f"slide {r['slide']}: {r['n_tiles']} tiles of {r['tile_size']} px at {r['target_mpp']} um/px, "
        f"tissue {100 * r['tissue_fraction']:.1f}%; model {r['backbone']} at {r['image_size']}, batch {r['batch_size']}, "
        f"{r['workers']} workers ({r['workers_requested']}), {r['device']} ({r['precision']}, {r['torch_threads']} threads)",
        f"  loader      {r['loader']['tiles_per_s']:8.1f} tiles/s  (reads + resize, uint8 batches; with the tissue grid "
        f"{r['loader']['tiles_per_s_with_grid']:.1f})",
        f"  model       {r['model']['tiles_per_s']:8.1f} tiles/s  (an in-memory batch of the slide's tiles; probabilities within "
        f"{r['model'].get('max_abs_prob_diff_vs_fp32', 0.0):.1e} of fp32)",
        f"  end to end  {r['end_to_end']['tiles_per_s']:8.1f} tiles/s  ({_ratio(r, 'e2e_over_model')} of the model bound; "
        f"the whole `medconv infer` command{_folder(r)})",
        f"    per slide {r['end_to_end']['slide_tiles_per_s']:8.1f} tiles/s  ({_ratio(r, 'slide_over_model')} of the model bound; "
        f"the slide's tiling, reading, model and output writing, without start-up and model loading)",
        f"  bottleneck: {'loader' if r['loader']['tiles_per_s'] < r['model']['tiles_per_s'] else 'model'}",
        f"  typical 20x slide (100k x 80k px, same tissue fraction): {r['typical_slide_tiles']:.0f} tiles, "
        f"{r['slides_per_hour']:.2f} slides/hour ({60 / max(r['slides_per_hour'], 1e-9):.1f} min/slide)",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medconv bench infer", description=__doc__.splitlines()[0])
    p.add_argument("--slide", type=Path, required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", type=Path, help="checkpoint or run directory")
    which.add_argument("--model", help="or a timm model name with random weights (speed only; --tile-size/--target-mpp "
                       "default 224 / 0.5)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", default="auto", help="loader workers, as `medconv infer --num-workers` (default: its auto)")
    p.add_argument("--slides", type=int, default=1, help="end to end over a folder of this many links to the slide "
                   "(a folder run: each slide's tiling overlaps the previous slide's scoring); the loader reads it as often")
    p.add_argument("--rounds", type=int, default=3, help="loader, model and end to end measured this many times in turn; "
                   "medians and the ratios' range are reported")
    p.add_argument("--tile-size", type=int, default=None)
    p.add_argument("--target-mpp", type=float, default=None)
    p.add_argument("--slide-mpp", type=float, default=None)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--precision", default=None, help="as `medconv infer --precision` (default: what it uses on this "
                   "machine; 32-true to compare at fp32)")
    p.add_argument("--max-tiles", type=int, default=None, help="loader figure from the first this many tiles")
    p.add_argument("--min-seconds", type=float, default=3.0, help="timed model work per round (half just before the "
                   "end-to-end run, half just after)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.slides < 1:
        parser.error("--rounds and --slides must be at least 1")
    result = run(args)
    print(report(result))
    if args.json:
        write_json(args.json, result)
    return 0 if result["end_to_end"]["exit"] == 0 and math.isfinite(result["slides_per_hour"]) else 1


if __name__ == "__main__":
    sys.exit(main())
