"""Localisation of a k-fold sweep's arms: the pointing game of each fold model's Grad-CAM on its own test fold.

For every finished run of the sweep (optionally only some arms), `medconv infer` runs the run's best checkpoint on
the lesion images of the run's test fold (Grad-CAM maps in original pixels), and `medconv.inference.pointing`
scores the maps' maxima against the manifest's lesions. Pooled over the folds, each arm and seed gets its hit rate
on every annotated lesion image with a patient-bootstrap interval, beside the chance rate of a maximum placed at
random in the breast.

    python benchmarks/pointing_game.py runs/ablation/mias_cpu --manifest medconv_data/mini_mias/manifest.csv \
        --shape ellipse --out docs/real_mammography/pointing_game.csv

Run it from the folder the sweep ran in (its records hold paths relative to it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from medconv.inference.cli import main as infer
from medconv.inference.pointing import hit_rate, pointing_table


def lesion_rows(manifest: Path, patients: set[str]) -> pd.DataFrame:
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    has_lesion = table["boxes"].str.len().gt(2) if "boxes" in table else table["mask_path"].ne("")
    return table[table["patient_id"].isin(patients) & has_lesion]


def score_run(record: dict, manifest: Path, work: Path, shape: str, tolerance_px: int) -> pd.DataFrame:
    """The pointing table of one run on its test fold's lesion images (inference output cached under `work`)."""
    tested = pd.read_csv(record["test_predictions"], dtype=str)
    rows = lesion_rows(manifest, set(tested["patient_id"]))
    out = work / record["run_id"]
    subset = work / f"{record['run_id']}.csv"
    rows.assign(image_path=[str((manifest.parent / p).resolve()) for p in rows["image_path"]]).to_csv(subset, index=False)
    if infer([record["best_checkpoint"], str(subset), "--out", str(out), "--accelerator", "cpu"]) != 0:
        raise RuntimeError(f"medconv infer failed for {record['run_id']}")
    table = pointing_table(out, subset, shape=shape, tolerance_px=tolerance_px)
    return table.assign(run_id=record["run_id"], fold=record.get("fold"), seed=record["seed"],
                        arm=f"{record['backbone']}-{record['init']}-f{record['fraction']:g}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="a `medconv ablate` output folder (records/*.json)")
    p.add_argument("--manifest", type=Path, required=True, help="the manifest with lesion boxes or masks")
    p.add_argument("--arms", nargs="*", default=None, help="only these arms (backbone-init-fFRACTION)")
    p.add_argument("--shape", choices=("box", "ellipse"), default="box", help="read boxes as boxes or inscribed ellipses")
    p.add_argument("--tolerance-px", type=int, default=0, help="grow each lesion by this many original pixels")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", type=Path, required=True, help="CSV of per-arm hit rates (per-image table beside it)")
    args = p.parse_args(argv)
    work = args.out.parent / f"{args.out.stem}_infer"
    work.mkdir(parents=True, exist_ok=True)
    tables = []
    for path in sorted((args.sweep / "records").glob("*.json")):
        record = json.loads(path.read_text())
        arm = f"{record['backbone']}-{record['init']}-f{record['fraction']:g}"
        if record.get("status") != "ok" or (args.arms and arm not in args.arms):
            continue
        print(f"{record['run_id']} ...", file=sys.stderr)
        tables.append(score_run(record, args.manifest, work, args.shape, args.tolerance_px))
    images = pd.concat(tables, ignore_index=True)
    images.to_csv(args.out.with_name(f"{args.out.stem}_images.csv"), index=False)
    summary = pd.DataFrame([{"arm": arm, "seed": seed, "folds": part["fold"].nunique(), **hit_rate(part, args.bootstrap)}
                            for (arm, seed), part in images.groupby(["arm", "seed"], sort=True)])
    summary.to_csv(args.out, index=False)
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
