"""`medconv bench tiles`: OpenSlide read_region vs the medconv reader vs the raw decode of the same stored tiles.

All three read the same aligned tile-sized regions of one level in row-major order (the order tiling and
inference use), in one process and then in worker processes. Each round opens fresh readers, so no cache
survives from one round to the next. The decode limit decodes, once each, exactly the stored tiles those
regions cover, from bytes already in memory: no reader can beat it, so medconv / limit says how much of
the available speed is left on the table. The CPU may be shared with other work, so the three readers take
turns every few dozen regions and the load average is recorded; the ratios are the figures to trust.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medconv.bench.machine import cpu_model
from medconv.demo.pyramid import generate_slide
from medconv.errors import InputFileError
from medconv.io.atomic import write_json

Positions = list[tuple[int, int]]  # level coordinates of region top-left corners


# --- measurements -------------------------------------------------------------------------------
def aligned_positions(dims: tuple[int, int], tile: int, max_reads: int) -> Positions:
    """Tile-aligned regions fully inside the level, row-major; a contiguous run from the middle when capped."""
    w, h = dims
    all_pos = [(x, y) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
    if len(all_pos) > max_reads:
        start = (len(all_pos) - max_reads) // 2
        all_pos = all_pos[start : start + max_reads]
    return all_pos


KINDS = ("openslide", "medconv", "decode_limit")


def _round(path: Path, level: int, positions: Positions, tile: int, chunk: int) -> dict[str, float]:
    """One pass over the regions with fresh readers; the three readers take turns every `chunk` regions.

    Taking turns at this grain means a burst of load from whoever shares the CPU hits all three alike.
    The OpenSlide figure is the bare library call (`OpenSlide.read_region` to an RGBA array), the
    baseline users quote; medconv's own OpenSlideReader adds compositing on white to that.
    """
    import openslide

    from medconv.io.slide import open_slide

    times = dict.fromkeys(KINDS, 0.0)
    size = (tile, tile)
    with openslide.OpenSlide(str(path)) as ref, open_slide(path) as fast, open(path, "rb") as fh:
        ds = ref.level_downsamples[level]
        grid = fast.grid(level)
        decode = grid.decode
        decoded: set[int] = set()
        for n, start in enumerate(range(0, len(positions), chunk)):
            part = positions[start : start + chunk]
            locs = [(int(round(x * ds)), int(round(y * ds))) for x, y in part]
            blobs = []  # the stored tiles this chunk needs that no earlier chunk decoded, as bytes in memory
            for x, y in part:
                for row in range(y // grid.tile_h, (y + tile - 1) // grid.tile_h + 1):
                    for col in range(x // grid.tile_w, (x + tile - 1) // grid.tile_w + 1):
                        i = row * grid.across + col
                        if i not in decoded and grid.counts[i]:
                            decoded.add(i)
                            fh.seek(int(grid.offsets[i]))
                            blobs.append(fh.read(int(grid.counts[i])))
            order = KINDS[n % 3 :] + KINDS[: n % 3]
            for kind in order:
                t0 = time.perf_counter()
                if kind == "decode_limit":
                    for blob in blobs:
                        decode(blob)
                elif kind == "openslide":
                    for loc in locs:
                        np.asarray(ref.read_region(loc, level, size))
                else:
                    for loc in locs:
                        fast.read_region(loc, level, size)
                times[kind] += time.perf_counter() - t0
    return times


def measure(
    path: Path, level: int, positions: Positions, tile: int, min_seconds: float, chunk: int = 50
) -> dict[str, float]:
    """Regions per second for each reader, over whole rounds, until `min_seconds` of timed work in all."""
    total = dict.fromkeys(KINDS, 0.0)
    reads = 0
    while reads == 0 or sum(total.values()) < min_seconds:
        for kind, t in _round(path, level, positions, tile, chunk).items():
            total[kind] += t
        reads += len(positions)
    return {kind: reads / t for kind, t in total.items()}


def _worker(args: tuple[str, int, Positions, int, float]) -> dict[str, float]:
    path, level, positions, tile, min_seconds = args
    return measure(Path(path), level, positions, tile, min_seconds)


def measure_workers(
    path: Path, level: int, positions: Positions, tile: int, min_seconds: float, workers: int
) -> dict[str, float]:
    """Aggregate regions/s of `workers` processes, each on its own contiguous share of the regions."""
    import multiprocessing as mp

    chunk = -(-len(positions) // workers)
    shares = [positions[i * chunk : (i + 1) * chunk] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_worker, [(str(path), level, positions[:1], tile, 0.0)] * workers)  # imports, not timed
        rates = pool.map(_worker, [(str(path), level, s, tile, min_seconds) for s in shares if s])
    return {kind: sum(r[kind] for r in rates) for kind in KINDS}


def max_abs_diff(path: Path, level: int, positions: Positions, tile: int, limit: int = 64) -> int:
    """Pixel check on a sample of the benchmarked regions: medconv vs OpenSlide."""
    from medconv.io.slide import OpenSlideReader, open_slide

    step = max(1, len(positions) // limit)
    with OpenSlideReader(path) as ref, open_slide(path) as fast:
        ds = ref.level_downsamples[level]
        worst = 0
        for x, y in positions[::step]:
            loc = (int(round(x * ds)), int(round(y * ds)))
            a = fast.read_region(loc, level, (tile, tile)).astype(np.int16)
            worst = max(worst, int(np.abs(a - ref.read_region(loc, level, (tile, tile))).max()))
    return worst


def run(path: Path, level: int, tile: int, max_reads: int, min_seconds: float, workers: int) -> dict:
    from medconv.io.slide import open_slide
    from medconv.io.tiff_reader import TiffSlideReader, can_read

    if not can_read(path):
        raise InputFileError(
            f"{path}: the fast TIFF reader does not handle this file (OpenSlide serves it), so there is no "
            "stored-tile decode limit to compare with; benchmark an Aperio SVS or a tiled TIFF."
        )
    with TiffSlideReader(path) as reader:
        if not 0 <= level < reader.level_count:
            raise InputFileError(f"{path}: --level {level} out of range; it has {reader.level_count} levels.")
        dims = reader.level_dimensions[level]
        grid = reader.grid(level)
    with open_slide(path) as reader:
        backend = type(reader).__name__
    positions = aligned_positions(dims, tile, max_reads)
    if not positions:
        raise InputFileError(f"{path}: level {level} ({dims[0]}x{dims[1]}) is smaller than one {tile}x{tile} region.")

    result: dict = {
        "slide": str(path),
        "level": level,
        "level_dimensions": list(dims),
        "stored_tile": [grid.tile_w, grid.tile_h],
        "codec": grid.codec,
        "read_size": tile,
        "reads_per_pass": len(positions),
        "medconv_backend": backend,
        "max_abs_diff_vs_openslide": max_abs_diff(path, level, positions, tile),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "workers": workers,
    }
    runs = [("", measure(path, level, positions, tile, min_seconds))]
    if workers > 1:
        runs.append((f"_{workers}w", measure_workers(path, level, positions, tile, min_seconds, workers)))
    for sfx, rates in runs:
        for kind in KINDS:
            result[f"{kind}_tiles_per_s{sfx}"] = round(rates[kind], 1)
        result[f"medconv_vs_openslide{sfx}"] = round(rates["medconv"] / rates["openslide"], 3)
        result[f"medconv_vs_decode_limit{sfx}"] = round(rates["medconv"] / rates["decode_limit"], 3)
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def report(r: dict) -> str:
    lines = [
        f"slide {r['slide']}: level {r['level']} {r['level_dimensions'][0]}x{r['level_dimensions'][1]}, stored "
        f"{r['stored_tile'][0]}x{r['stored_tile'][1]} {r['codec']}, {r['reads_per_pass']} aligned "
        f"{r['read_size']}x{r['read_size']} reads per pass; medconv backend {r['medconv_backend']}",
        f"cpu {r['cpu']} x{r['cpu_count']}, load {r['loadavg_start'][0]:.2f} -> {r['loadavg_end'][0]:.2f}; {r['date']}",
        f"max abs diff medconv vs OpenSlide: {r['max_abs_diff_vs_openslide']}",
        "",
        f"{'':14}{'1 process':>12}" + (f"{str(r['workers']) + ' workers':>12}" if r["workers"] > 1 else ""),
    ]
    sfx = f"_{r['workers']}w"
    for name, label in (("openslide", "OpenSlide"), ("medconv", "medconv"), ("decode_limit", "decode limit")):
        row = f"{label + ' /s':14}{r[f'{name}_tiles_per_s']:>12.0f}"
        if r["workers"] > 1:
            row += f"{r[f'{name}_tiles_per_s{sfx}']:>12.0f}"
        lines.append(row)
    for key, label in (("medconv_vs_openslide", "medconv / OpenSlide"), ("medconv_vs_decode_limit", "medconv / limit")):
        row = f"{label:22}{r[key]:>5.2f}x"
        if r["workers"] > 1:
            row += f"{r[key + sfx]:>11.2f}x"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medconv bench tiles", description=__doc__.splitlines()[0])
    p.add_argument("--slide", type=Path, help="slide to measure (Aperio SVS or tiled TIFF)")
    p.add_argument(
        "--generate", type=Path, help="first write an H&E-like JPEG pyramid TIFF here (the slide if --slide is absent)"
    )
    p.add_argument("--size", type=int, default=20000, help="side of the generated slide, pixels (default 20000)")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality of the generated slide (default 80)")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--tile", type=int, default=256, help="read size, aligned to a grid of this size (default 256)")
    p.add_argument("--max-reads", type=int, default=1000, help="regions per pass (default 1000)")
    p.add_argument(
        "--min-seconds", type=float, default=3.0, help="timed work of all readers together, per setting (default 3)"
    )
    p.add_argument("--workers", type=int, default=2, help="also measure this many processes (default 2; 1 to skip)")
    args = p.parse_args(argv)
    slide = args.slide
    if args.generate is not None:
        t0 = time.perf_counter()
        generate_slide(args.generate, size=args.size, quality=args.quality)
        print(f"wrote {args.generate} ({args.size}x{args.size}, q{args.quality}) in {time.perf_counter() - t0:.1f}s")
        slide = slide or args.generate
    if slide is None:
        p.error("give --slide PATH or --generate PATH")
    if not slide.exists():
        raise InputFileError(f"{slide}: slide not found; check the path or use --generate to write one.")
    result = run(slide, args.level, args.tile, args.max_reads, args.min_seconds, args.workers)
    print(report(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
