"""`medconv export-tiles`: write the tiles of coords stores as image files, for tools that want files.

medconv itself never needs this (tiles are read on the fly). Layout: OUT/<slide>/<slide>_x<X>_y<Y>.png
(level-0 top-left corner in the name) plus OUT/tiles.csv indexing them. Each file is written to a temp
name and renamed; files already there are skipped, so an interrupted export resumes.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import cv2
import numpy as np

from medconv.errors import InputFileError, MedconvError
from medconv.io.atomic import write_bytes, write_text
from medconv.wsi.tile_dataset import SlideTiles, TileDataset, load_slide_tiles


def slide_sources(coords_dir: Path, manifest: Path | None) -> list[tuple[Path, Path, str]]:
    """(coords store, slide path, slide label) per store; the manifest (if any) maps slide stems to paths."""
    stores = sorted(coords_dir.glob("*.h5"))
    if not stores:
        raise InputFileError(f"{coords_dir}: no coords stores (*.h5); run `medconv tile SLIDES --out {coords_dir}` first.")
    known: dict[str, tuple[Path, str]] = {}
    if manifest is not None:
        from medconv.data.manifest import read_manifest

        table = read_manifest(manifest, ["slide_path"], path_columns=["slide_path"], group_column="slide_path")
        ids = table["slide_id"] if "slide_id" in table.columns else [Path(p).stem for p in table["slide_path"]]
        labels = table["label"] if "label" in table.columns else [""] * len(table)
        known = {sid: (Path(p), lab) for sid, p, lab in zip(ids, table["slide_path"], labels, strict=True)}
    out = []
    for store in stores:
        if store.stem in known:
            out.append((store, *known[store.stem]))
        elif manifest is None:
            from medconv.tiling.coords_store import read_coords

            source = read_coords(store)[1].get("source_path")
            if not source:
                raise InputFileError(f"{store}: no source_path attribute; pass --manifest with the slides' paths.")
            out.append((store, Path(source), ""))
    return out


def export_slide(st: SlideTiles, out_dir: Path, fmt: str, quality: int) -> list[dict]:
    """Write one slide's tiles; returns index rows (existing files are kept and listed)."""
    folder = out_dir / st.slide_id
    folder.mkdir(parents=True, exist_ok=True)
    dataset = TileDataset([st])
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    rows = []
    try:
        for i, (x, y) in enumerate(st.coords.tolist()):
            path = folder / f"{st.slide_id}_x{x}_y{y}.{fmt}"
            if not path.exists():
                ok, data = cv2.imencode(f".{fmt}", cv2.cvtColor(dataset.read_tile(0, i), cv2.COLOR_RGB2BGR), params)
                if not ok:
                    raise InputFileError(f"{path}: encoding failed")
                write_bytes(path, np.asarray(data).tobytes())
            rows.append({"path": path.relative_to(out_dir).as_posix(), "slide_id": st.slide_id, "x": x, "y": y})
    finally:
        dataset.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medconv export-tiles", description=__doc__.splitlines()[0])
    p.add_argument("--coords", type=Path, required=True, help="folder of coords stores (<slide>.h5) from `medconv tile`")
    p.add_argument("--manifest", type=Path, help="slide manifest (slide_path[, slide_id, label]); default: each store's source_path")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--mpp", type=float, help="microns per pixel for slides whose files lack it")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        sources = slide_sources(args.coords, args.manifest)
        args.out.mkdir(parents=True, exist_ok=True)
        index = []
        for store, slide, label in sources:
            st = load_slide_tiles(slide, store, label_index=0, slide_id=store.stem, mpp=args.mpp)
            rows = export_slide(st, args.out, args.format, args.quality)
            index += [r | {"label": label} for r in rows]
            print(f"{store.stem}: {len(rows)} tiles", file=sys.stderr)
    except MedconvError as err:
        print(f"medconv export-tiles: error: {err}", file=sys.stderr)
        return 2
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("path", "slide_id", "x", "y", "label"), lineterminator="\n")
    writer.writeheader()
    writer.writerows(index)
    write_text(args.out / "tiles.csv", buffer.getvalue())
    print(f"wrote {len(index)} tiles from {len(sources)} slides to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
