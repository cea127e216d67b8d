"""Demo bags for MIL: demo slides with slide labels, tiled and embedded by `medconv embed`, so
`medconv fit --config configs/wsi_abmil.yaml` runs with no data of one's own, like every other recipe.

Every step skips finished work (the generator keeps slides made with the same parameters, the tiler complete
coords stores, `medconv embed` complete feature files), so a second run starts training at once.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medconv.embedding.features import file_attrs
from medconv.errors import ConfigError
from medconv.io.atomic import write_text


@dataclass(frozen=True)
class MILDemo:
    """What the demo set is: slides (odd ones carry tumour), their tiling and the encoder of the features. The
    encoder is a timm name with random weights (no downloads here): a baseline, see docs/mil.md."""

    dir: str = "medconv_data/demo_wsi_mil"
    slides: int = 24
    seed: int = 0
    slide_size: tuple[int, int] = (3072, 2304)
    difficulty: str = "hard"
    encoder: str = "resnet18d"
    tile_size: int = 112
    target_mpp: float = 1.0


def demo_manifest(demo: MILDemo) -> Path:
    """Generate, tile and embed the demo slides under `demo.dir`; the manifest (slide_path, label, patient_id,
    features_path, coords_path) that `MILDataModule` reads."""
    from medconv.demo.difficulty import demo_root
    from medconv.demo.wsi import generate_demo_slides
    from medconv.tiling.slide_tiler import TileOptions, tile_slide

    root = demo_root(demo.dir, demo.difficulty).resolve()
    width, height = demo.slide_size
    slides = pd.read_csv(generate_demo_slides(root, n_slides=demo.slides, seed=demo.seed, width=width, height=height,
                                              difficulty=demo.difficulty))
    coords = root / f"coords_{demo.tile_size}px_{demo.target_mpp:g}mpp"
    coords.mkdir(parents=True, exist_ok=True)
    for slide in slides["slide_path"]:
        tile_slide(root / slide, coords, Path(slide).stem, TileOptions(target_mpp=demo.target_mpp, tile_size=demo.tile_size))
    features = root / f"features_{demo.encoder}_{demo.tile_size}px_{demo.target_mpp:g}mpp"
    stems = [Path(p).stem for p in slides["slide_path"]]
    if not all(file_attrs(features / f"{s}.h5") for s in stems):  # the folder's name fixes encoder and tiling
        _embed(demo, root, coords, features, len(stems))
    table = slides[["slide_path", "label", "patient_id"]].copy()
    table["features_path"] = [str(features / f"{s}.h5") for s in stems]
    table["coords_path"] = [str(coords / f"{s}.h5") for s in stems]
    manifest = root / "mil_manifest.csv"
    write_text(manifest, table.to_csv(index=False))
    return manifest


def _embed(demo: MILDemo, root: Path, coords: Path, features: Path, n_slides: int) -> None:
    """`medconv embed` in a child process (its own DataLoader and threads), resuming what an earlier run left."""
    command = [sys.executable, "-m", "medconv.cli", "embed", demo.encoder, str(root / "slides"), "--out", str(features),
               "--coords-dir", str(coords), "--tile-size", str(demo.tile_size), "--target-mpp", str(demo.target_mpp),
               "--num-workers", "0", "--accelerator", "cpu"]
    print(f"MIL demo data: embedding {n_slides} demo slides with {demo.encoder} into {features}", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"MIL demo data: `medconv embed` failed ({done.returncode}):\n{done.stderr[-2000:]}")
