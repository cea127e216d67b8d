"""The `medconv` command.

`fit | validate | test | predict` are LightningCLI subcommands (configs as `class_path` + `init_args`,
composable with repeated `--config`); the tool subcommands below live in their own modules and are
imported only when called, so `medconv --help` stays fast.
"""

from __future__ import annotations

import sys

from medconv.commands import dispatch, usage
from medconv.errors import MedconvError

LIGHTNING_COMMANDS = {
    "fit": "Train (and validate) a model; the run directory keeps config.yaml, checkpoints, metrics, plots.",
    "validate": "Evaluate a checkpoint on the validation split.",
    "test": "Evaluate a checkpoint on the test split.",
    "predict": "Write predictions of a checkpoint.",
}

TOOLS = {
    "demo-data": ("medconv.demo.cli", "Write synthetic demo data: `mammo` or `wsi`."),
    "tile": ("medconv.tiling.cli", "Tile slides: tissue mask, grid at target mpp, HDF5 coords, QC images."),
    "bench": ("medconv.bench.cli", "Measure your setup: `train-overhead`, `tiles`, `infer`, `gpu` (all GPU goals)."),
    "infer": ("medconv.inference.cli", "Slide heatmaps, tile scores, QuPath GeoJSON and slide scores; mammogram predictions."),
    "embed": ("medconv.embedding.cli", "Tile features per slide for MIL (CLAM/TRIDENT h5 + pt) from a pathology encoder "
              "by name (uni2-h, virchow2, ...: --list-encoders), a timm name, an SSL export or a medconv run."),
    "export": ("medconv.export.cli", "A run in the timm / Hugging Face hub format: config.json, model.safetensors, model card."),
    "evaluate-heatmaps": ("medconv.inference.quality", "Tile/slide AUROC and FROC of `medconv infer` heatmaps against tumour masks."),
    "export-tiles": ("medconv.wsi.export_tiles", "Write the tiles of coords stores as image files for other tools."),
    "prepare": ("medconv.data_prep.cli", "Build manifests from public dataset layouts (CBIS-DDSM, VinDr-Mammo, mini-MIAS, CAMELYON16)."),
    "ablate": ("medconv.ablation.cli", "Low-label ablation sweeps (backbones x inits x label fractions x seeds); `ablate report DIR`."),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in TOOLS:
            sys.exit(dispatch(argv, TOOLS, prog="medconv"))
        if not argv or argv[0] in ("-h", "--help"):
            print(usage("medconv", TOOLS, LIGHTNING_COMMANDS))
            sys.exit(0 if argv else 2)
        from medconv.lightning_cli import run_lightning

        run_lightning(argv)
    except MedconvError as err:
        print(f"medconv: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
