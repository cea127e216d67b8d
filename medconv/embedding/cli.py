"""`medconv embed ENCODER INPUT... --out DIR`: tile features per slide for MIL training (CLAM/TRIDENT layout).

ENCODER: a pathology encoder by name (`uni`, `virchow2`, ...: `--list-encoders` prints them; weights from the
Hugging Face cache or hub), a timm model name (with --weights FILE; without, random weights: a baseline only), an SSL export
(encoder.safetensors + encoder.json, or their run folder), or a medconv classification .ckpt / run folder (its
backbone). INPUT: slide files, folders, globs or a manifest CSV (`slide_path` [, slide_id, mpp]). Writes
<out>/<slide>.h5 (features, coords), optionally <out>/pt_files/<slide>.pt, and summary.csv; a rerun skips slides
done with the same encoder and tiling (docs/embedding.md). Exit code: 0 all ok or skipped, 1 some slide failed,
2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from medconv.errors import ConfigError
from medconv.slides.run_args import add_run_arguments, trainer_kwargs

PROG = "medconv embed"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("encoder", nargs="?", metavar="ENCODER", help="registry name (--list-encoders), timm name, SSL "
                   "export (folder or encoder.safetensors), or medconv .ckpt / run folder")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="slides: files, folders, globs or a manifest .csv")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--list-encoders", nargs="?", const="table", choices=("table", "markdown"), default=None,
                   help="print the encoders known by name (hub id, arch, feature dim, input size, mpp, licence, extra) "
                   "and exit; `markdown` for a table to paste")
    p.add_argument("--weights", default=None, help="local weights file for a timm ENCODER (.safetensors/.pth/.ckpt)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="stored feature dtype")
    p.add_argument("--clam-pt", action="store_true", help="also write pt_files/<slide>.pt (what CLAM's training reads)")
    p.add_argument("--tile-size", type=int, default=None, help="tile side in px at the target mpp (default: the "
                   "encoder's training tiles, else 224)")
    p.add_argument("--target-mpp", type=float, default=None, help="tile resolution, um/px (default: the encoder's, else 0.5)")
    p.add_argument("--image-size", default=None, help="encoder input size, N or H,W (default: a medconv classifier's "
                   "training size, else the tile size); tiles are resized to it")
    p.add_argument("--coords-dir", type=Path, default=None, help="reuse `medconv tile` stores (<slide>.h5) instead of tiling")
    p.add_argument("--min-tissue", type=float, default=0.25, help="tissue fraction a tile needs when tiling on the fly")
    add_run_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="redo slides whose feature files are complete")
    p.add_argument("--backend", default="auto", help="slide reader: auto, openslide, tiff, plain")
    return p


def main(argv: list[str] | None = None) -> int:
    from medconv.commands import run_tool

    return run_tool(build_parser(), run, argv, PROG)


def run(args: argparse.Namespace) -> int:
    from medconv.embedding.encoders import load_encoder
    from medconv.embedding.run import embed_options, embed_slides, write_summary
    from medconv.slides.jobs import slide_jobs

    if args.list_encoders:
        print(encoder_table(markdown=args.list_encoders == "markdown"))
        return 0
    if args.encoder is None or not args.inputs or args.out is None:
        raise ConfigError("pass ENCODER, at least one INPUT and --out DIR (or --list-encoders to see the encoders "
                          "known by name).")
    image_size = parse_size(args.image_size)
    for name in ("tile_size", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    jobs, not_slides = slide_jobs(args.inputs, exclude=[args.out], slide_mpp=args.slide_mpp)
    with warnings.catch_warnings(record=True) as caught:  # said once, plainly, not as a Python warning
        warnings.simplefilter("always", UserWarning)
        encoder = load_encoder(args.encoder, args.weights)
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    run_kwargs = trainer_kwargs(args)
    options = embed_options(
        encoder, args.out, tile_size=args.tile_size, target_mpp=args.target_mpp, image_size=image_size,
        coords_dir=args.coords_dir, min_tissue=args.min_tissue, batch_size=args.batch_size, num_workers=args.num_workers,
        overwrite=args.overwrite, backend=args.backend, pin_memory=run_kwargs["accelerator"] not in ("cpu",),
        dtype=args.dtype, clam_pt=args.clam_pt,
    )
    rows, is_main = embed_slides(jobs, encoder, options, run_kwargs)
    rows += [{"slide": p.name, "path": str(p), "status": "skipped", "n_tiles": 0, "error": why} for p, why in not_slides]
    failed = [r for r in rows if r["status"] == "failed"]
    if is_main:
        summary = write_summary(args.out / "summary.csv", rows)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
        print(f"{PROG}: {counts['ok']} slides embedded ({encoder.info['name']}, {encoder.dim} features, "
              f"{options.tile_size} px at {options.target_mpp:g} um/px), {counts['skipped']} skipped, {counts['failed']} "
              f"failed; see {summary}", file=sys.stderr)
        for r in failed:
            print(f"  failed {r['slide']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def encoder_table(markdown: bool = False) -> str:
    """The registry as a table: aligned text for the terminal, or markdown (docs/embedding.md holds this one)."""
    from medconv.models.encoder_registry import encoder_rows

    rows = encoder_rows()
    header = list(rows[0])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(f"`{v}`" if k in ("name", "hub id") else v for k, v in r.items())
                                   + " |" for r in rows])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in header}
    lines = ["  ".join(k.ljust(widths[k]) for k in header).rstrip()]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in header).rstrip() for r in rows]
    return "\n".join(lines)


def parse_size(value: str | None) -> tuple[int, int] | None:
    """`224`, `224,256` or `224x256` -> (H, W)."""
    if value is None:
        return None
    parts = value.replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise ConfigError(f"--image-size {value!r}: expected N or H,W in pixels, e.g. 224 or 224,224.")
    return (size[0], size[-1])


if __name__ == "__main__":
    sys.exit(main())
