"""The `medconv` command.

`fit | validate | test | predict` are LightningCLI subcommands (configs as `class_path` + `init_args`,
composable with repeated `--config`); the tool subcommands below live in their own modules and are
imported only when called, so `medconv --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

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
    "bench": ("medconv.bench.cli", "Benchmarks: `train-overhead`, `tiles`, `models`, `gresnet-fuse`, `ssl`, `infer`, `gpu` (all GPU goals)."),
    "infer": ("medconv.inference.cli", "Slide heatmaps, tile scores, QuPath GeoJSON and slide scores; mammogram predictions."),
    "embed": ("medconv.embedding.cli", "Tile features per slide for MIL (CLAM/TRIDENT h5 + pt) from a timm, SSL or medconv encoder."),
    "evaluate-heatmaps": ("medconv.inference.quality", "Tile/slide AUROC and FROC of `medconv infer` heatmaps against tumour masks."),
    "export-tiles": ("medconv.wsi.export_tiles", "Write the tiles of coords stores as image files for other tools."),
    "prepare": ("medconv.data_prep.cli", "Build manifests from public dataset layouts (CBIS-DDSM, VinDr-Mammo, CAMELYON16)."),
    "ablate": ("medconv.ablation.cli", "Low-label ablation sweeps (backbones x inits x label fractions x seeds); `ablate report DIR`."),
}


def _usage(prog: str, table: dict[str, tuple[str, str]], extra: dict[str, str] | None = None) -> str:
    rows = dict(extra or {})
    rows.update({name: help_ for name, (_, help_) in table.items()})
    width = max(len(n) for n in rows)
    lines = [f"usage: {prog} <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, help_ in rows.items()]
    lines += ["", f"`{prog} <command> --help` for a command's options."]
    return "\n".join(lines)


def dispatch(argv: list[str] | None, table: dict[str, tuple[str, str]], prog: str) -> int:
    """Run `table[argv[0]]`'s `main(argv[1:])`; shared by every command that has subcommands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog, table))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: unknown command {name!r}; choose from: {', '.join(table)}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[name][0])
    return int(module.main(rest) or 0)


def run_tool(parser, run, argv: list[str] | None, prog: str) -> int:  # noqa: ANN001 -- argparse parser, run(args) -> int
    """Parse `argv` and call `run(args)`: usage errors exit 2 (argparse), a MedconvError prints one line and exits 2."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return run(args)
    except MedconvError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in TOOLS:
            sys.exit(dispatch(argv, TOOLS, prog="medconv"))
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage("medconv", TOOLS, LIGHTNING_COMMANDS))
            sys.exit(0 if argv else 2)
        from medconv.lightning_cli import run_lightning

        run_lightning(argv)
    except MedconvError as err:
        print(f"medconv: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
