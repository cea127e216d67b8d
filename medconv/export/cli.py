"""`medconv export RUN --out DIR`: a run in the timm / Hugging Face hub format (config.json, model.safetensors, card).

RUN is a classification run (the classifier, head included) or a pretraining run (its encoder, `num_classes=0`).
`timm.create_model("local-dir:DIR", pretrained=True)` loads the folder, and `hf-hub:ORG/NAME` after
`hf upload ORG/NAME DIR` (docs/export.md). Exit code: 0 written, 2 usage error or a run that timm cannot reproduce
(nothing written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROG = "medconv export"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("run", metavar="RUN", help="a medconv .ckpt or run folder (its best checkpoint): classification or pretraining")
    p.add_argument("--out", required=True, type=Path, help="folder to write (created; refused if not empty unless --force)")
    p.add_argument("--force", action="store_true", help="replace the export files in a non-empty --out (other files stay)")
    p.add_argument("--license", default="other", help="license of the weights for the card, a Hugging Face license id "
                   "(default: other; the training data's terms decide)")
    p.add_argument("--hub-id", default=None, metavar="ORG/NAME", help="the hub repo it will be uploaded to (for the card's snippet)")
    p.add_argument("--name", default=None, help="the model's name in the card (default: the --out folder's name)")
    p.add_argument("--with-checkpoint", action="store_true", help="also write medconv.ckpt (weights + run record, no "
                   "optimiser state) so `medconv infer` runs it from the folder")
    return p


def main(argv: list[str] | None = None) -> int:
    from medconv.commands import run_tool

    return run_tool(build_parser(), run, argv, PROG)


def run(args: argparse.Namespace) -> int:
    from medconv.errors import ConfigError
    from medconv.export.run import export_run

    if args.hub_id is not None and (args.hub_id.count("/") != 1 or not all(args.hub_id.split("/"))):
        raise ConfigError(f"--hub-id {args.hub_id!r}: give the hub repository as ORG/NAME.")

    result = export_run(args.run, args.out, force=args.force, license_=args.license, hub_id=args.hub_id, name=args.name,
                        with_checkpoint=args.with_checkpoint)
    config = result.config
    what = f"{config['num_classes']} classes" if config["num_classes"] else f"encoder, {config['num_features']} features"
    print(f"{PROG}: {config['architecture']} ({what}) from {result.run.checkpoint.name} -> {result.out}")
    for path in result.files:
        print(f"  {path.name:<18} {path.stat().st_size / 1e6:8.2f} MB")
    print(f"  timm reproduces the run: max |difference| {result.max_difference:.2g}")
    print(f'  load: timm.create_model("local-dir:{result.out}", pretrained=True)')
    print(f"  publish: hf upload {args.hub_id or 'ORG/NAME'} {result.out}")
    return 0
