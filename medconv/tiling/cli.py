"""`medconv tile INPUT... --out DIR`: tissue masks, tile grids at a target mpp, coords stores, QC images.

Slides run in parallel processes; a slide that fails (corrupt, unsupported, no mpp) is recorded in
summary.csv and the rest finish; files in INPUT folders that are not slides are listed there as skipped,
with the reason. Exit code: 0 all ok or skipped, 1 some slide failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medconv.errors import MedconvError
from medconv.io.atomic import write_text
from medconv.tiling.inputs import find_inputs
from medconv.tiling.slide_tiler import TileOptions, tile_slide_safe

SUMMARY_COLUMNS = ("slide", "status", "n_tiles", "tissue_mm2", "mpp", "seconds", "error", "path")
SHOW_SKIPPED = 10  # skipped files printed; all of them are in summary.csv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medconv tile", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="slide files, folders (searched recursively) or globs")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--target-mpp", type=_positive_float, default=0.5, help="microns per pixel of the tiles (default 0.5, ~20x)")
    p.add_argument("--tile-size", type=_positive_int, default=256, help="tile side in pixels at the target mpp")
    p.add_argument("--overlap", type=int, default=0, help="overlap between neighbouring tiles, pixels at the target mpp")
    p.add_argument("--min-tissue", type=float, default=0.25, help="keep tiles with at least this tissue fraction (0-1)")
    p.add_argument("--slide-mpp", type=_positive_float, default=None,
                   help="microns per level-0 pixel for slides whose files lack it (overrides the metadata of every slide)")
    p.add_argument("--workers", type=_positive_int, default=max(1, min(4, os.cpu_count() or 1)), help="slides in parallel")
    p.add_argument("--overwrite", action="store_true", help="redo slides whose outputs are already complete")
    return p


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not 0 <= args.overlap < args.tile_size:
        parser.print_usage(sys.stderr)
        print(f"medconv tile: error: --overlap must be in [0, {args.tile_size})", file=sys.stderr)
        return 2
    if not 0 <= args.min_tissue <= 1:
        print("medconv tile: error: --min-tissue must be in [0, 1]", file=sys.stderr)
        return 2
    try:
        slides, not_slides = find_inputs(args.inputs, exclude=[args.out])
    except MedconvError as err:
        print(f"medconv tile: error: {err}", file=sys.stderr)
        return 2
    options = TileOptions(
        target_mpp=args.target_mpp, tile_size=args.tile_size, overlap=args.overlap,
        min_tissue=args.min_tissue, slide_mpp=args.slide_mpp, overwrite=args.overwrite,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(slides, args.out, options, args.workers)
    summary = write_summary(args.out / "summary.csv", rows + skipped_rows(not_slides))
    failed = [r for r in rows if r["status"] == "failed"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    print(f"medconv tile: {counts['ok']} tiled, {counts['skipped']} already done, {len(not_slides)} skipped (not slides), "
          f"{counts['failed']} failed; see {summary}", file=sys.stderr)
    for path, reason in not_slides[:SHOW_SKIPPED]:
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    if len(not_slides) > SHOW_SKIPPED:
        print(f"  ... and {len(not_slides) - SHOW_SKIPPED} more skipped files, listed in {summary}", file=sys.stderr)
    for r in failed:
        print(f"  failed {r['slide']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def skipped_rows(not_slides: list[tuple[Path, str]]) -> list[dict[str, Any]]:
    """Summary rows for the files in INPUT folders that are not slides: status `skipped`, the reason as error."""
    return [{"slide": path.name, "path": str(path), "status": "skipped", "n_tiles": 0, "error": reason}
            for path, reason in not_slides]


def run(slides: list[tuple[str, Path]], out: Path, options: TileOptions, workers: int) -> list[dict[str, Any]]:
    """Tile every slide; one summary row each, in input order."""
    rows: dict[str, dict[str, Any]] = {}
    jobs = [(str(path), str(out), name, options) for name, path in slides]
    with tqdm(total=len(jobs), desc="tiling", unit="slide", file=sys.stderr, disable=None) as bar:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                rows[job[2]] = tile_slide_safe(*job)
                bar.update()
        else:
            crashed = _run_pool(jobs, min(workers, len(jobs)), rows, bar)
            for job in crashed:  # a reader that crashed its process (e.g. a segfault) takes only itself down
                _run_pool([job], 1, rows, bar, crashed_error=True)
    return [rows[name] for name, _ in slides]


def _run_pool(jobs: list[tuple], workers: int, rows: dict, bar: tqdm, crashed_error: bool = False) -> list[tuple]:
    crashed = []
    # forkserver: workers never inherit the caller's threads (torch, OpenSlide caches) mid-lock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        futures = {pool.submit(tile_slide_safe, *job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                rows[job[2]] = future.result()
            except BrokenProcessPool:
                if not crashed_error:
                    crashed.append(job)
                    continue
                rows[job[2]] = {"slide": job[2], "path": job[0], "status": "failed", "n_tiles": 0, "tissue_mm2": None,
                                "mpp": None, "seconds": None, "error": "the worker process crashed while reading this slide"}
            bar.update()
    return crashed


def write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    """summary.csv of this run, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_COLUMNS})
    return write_text(path, buffer.getvalue())


if __name__ == "__main__":
    sys.exit(main())
