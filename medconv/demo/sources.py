"""Demo sources: what a datamodule without a manifest trains on, given as one `demo` object.

    data:
      class_path: medconv.mammo.MammoDataModule
      init_args:
        demo:
          class_path: medconv.demo.MammoDemo
          init_args: {root: medconv_data/demo_mammo, n_patients: 120, difficulty: easy}

Every source makes its set once under `root` (another difficulty than easy under `<root>_<difficulty>`) and reuses
it while the parameters are the same; `manifest(...)` returns the CSV the datamodule reads. The generators are
imported when the data is made, not when a config is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medconv.demo.difficulty import MAMMO_PRESETS, WSI_PRESETS, check_difficulty, demo_root


@dataclass(frozen=True)
class MammoDemo:
    """Synthetic screening exams (`medconv demo-data mammo`): `n_patients` patients of 4 images at `image_size`
    (rows, cols); `lesion_contrast` is the range drawn per lesion; `difficulty` easy | hard. The whole-image and
    patch datamodules share one set (and, with the same seed, one split) when their demo objects are equal."""

    root: str = "medconv_data/demo_mammo"
    n_patients: int = 120
    seed: int = 0
    image_size: tuple[int, int] = (1024, 800)
    lesion_contrast: tuple[float, float] = (0.15, 0.4)
    difficulty: str = "easy"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(self, "lesion_contrast", tuple(float(v) for v in self.lesion_contrast))
        check_difficulty(self.difficulty, MAMMO_PRESETS)

    def manifest(self) -> Path:
        from medconv.demo.mammo import demo_manifest

        return demo_manifest(self.root, self.n_patients, self.seed, self.image_size, self.lesion_contrast, self.difficulty)


@dataclass(frozen=True)
class SlideDemo:
    """Synthetic H&E slides (`medconv demo-data wsi`), odd ones with tumour and its mask: `n_slides` slides of
    `slide_size` (width, height) px at 0.5 um/px; `difficulty` easy | hard | subtle. Tiled at the geometry the
    datamodule asks for, coords stores in `<root>/coords_<tile>px_<mpp>mpp/`."""

    root: str = "medconv_data/demo_wsi"
    n_slides: int = 6
    seed: int = 0
    slide_size: tuple[int, int] = (4096, 3072)
    difficulty: str = "easy"

    def __post_init__(self) -> None:
        object.__setattr__(self, "slide_size", tuple(int(v) for v in self.slide_size))
        check_difficulty(self.difficulty, WSI_PRESETS)

    @property
    def folder(self) -> Path:
        """Where this set lives: `root` for easy, `<root>_<difficulty>` otherwise."""
        return demo_root(self.root, self.difficulty)

    def manifest(self, tile_size: int, target_mpp: float) -> Path:
        """The slides' manifest with a `coords_path` column (relative to it), after generating and tiling once."""
        import pandas as pd

        from medconv.demo.wsi import generate_demo_slides
        from medconv.io.atomic import write_text
        from medconv.tiling.slide_tiler import TileOptions, tile_slide

        root = self.folder
        width, height = self.slide_size
        slides = pd.read_csv(generate_demo_slides(root, n_slides=self.n_slides, seed=self.seed, width=width, height=height,
                                                  difficulty=self.difficulty), dtype=str, keep_default_na=False)
        coords = f"coords_{tile_size}px_{target_mpp:g}mpp"
        (root / coords).mkdir(parents=True, exist_ok=True)
        options = TileOptions(target_mpp=target_mpp, tile_size=tile_size)
        for slide in slides["slide_path"]:
            tile_slide(root / slide, root / coords, Path(slide).stem, options)
        slides["coords_path"] = [f"{coords}/{Path(s).stem}.h5" for s in slides["slide_path"]]
        manifest = root / f"{coords}.csv"
        text = slides.to_csv(index=False, lineterminator="\n")
        if not manifest.is_file() or manifest.read_text() != text:
            write_text(manifest, text)
        return manifest
