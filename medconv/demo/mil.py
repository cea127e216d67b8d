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

from medconv.demo.difficulty import WSI_PRESETS, check_difficulty
from medconv.demo.sources import SlideDemo
from medconv.errors import ConfigError


@dataclass(frozen=True)
class MILDemo:
    """What the demo set is: `n_slides` slides (odd ones carry tumour) of `slide_size` px, tiled at `tile_size` px
    and `target_mpp`, embedded by `encoder`: a timm name with random weights (no downloads here), a baseline (see
    docs/mil.md). The set lives in `<root>_<difficulty>` (`root` for easy), as for `SlideDemo`."""

    root: str = "medconv_data/demo_wsi_mil"
    n_slides: int = 24
    seed: int = 0
    slide_size: tuple[int, int] = (3072, 2304)
    difficulty: str = "hard"
    encoder: str = "resnet18d"
    tile_size: int = 112
    target_mpp: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "slide_size", tuple(int(v) for v in self.slide_size))
        check_difficulty(self.difficulty, WSI_PRESETS)

    def manifest(self) -> Path:
        """Generate, tile and embed the demo slides; the manifest (slide_path, label, patient_id, features_path,
        coords_path) that `MILDataModule` reads."""
        import pandas as pd

        from medconv.io.atomic import write_text
        from medconv.tiling.feature_store import file_attrs

        slides = SlideDemo(self.root, self.n_slides, self.seed, self.slide_size, self.difficulty)
        root = slides.folder.resolve()
        table = pd.read_csv(slides.manifest(self.tile_size, self.target_mpp), dtype=str, keep_default_na=False)
        coords = root / f"coords_{self.tile_size}px_{self.target_mpp:g}mpp"
        features = root / f"features_{self.encoder}_{self.tile_size}px_{self.target_mpp:g}mpp"
        stems = [Path(p).stem for p in table["slide_path"]]
        if not all(file_attrs(features / f"{s}.h5") for s in stems):  # the folder's name fixes encoder and tiling
            self._embed(root, coords, features, len(stems))
        table = table[["slide_path", "label", "patient_id"]].copy()
        table["features_path"] = [str(features / f"{s}.h5") for s in stems]
        table["coords_path"] = [str(coords / f"{s}.h5") for s in stems]
        manifest = root / "mil_manifest.csv"
        write_text(manifest, table.to_csv(index=False))
        return manifest

    def _embed(self, root: Path, coords: Path, features: Path, n_slides: int) -> None:
        """`medconv embed` in a child process (its own DataLoader and threads), resuming what an earlier run left."""
        command = [sys.executable, "-m", "medconv.cli", "embed", self.encoder, str(root / "slides"), "--out", str(features),
                   "--coords-dir", str(coords), "--tile-size", str(self.tile_size), "--target-mpp", str(self.target_mpp),
                   "--num-workers", "0", "--accelerator", "cpu"]
        print(f"MIL demo data: embedding {n_slides} demo slides with {self.encoder} into {features}", file=sys.stderr)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"MIL demo data: `medconv embed` failed ({done.returncode}):\n{done.stderr[-2000:]}")
