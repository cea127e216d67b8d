"""The MIL evidence of docs/mil.md, CPU size: from slide labels only, does attention MIL classify held-out slides
(slide AUROC) and does its attention find the tumour (tile AUROC of attention against the tumour masks, within
tumour slides)?

Data: 64 hard demo slides (3072 x 2304 px at 0.5 um/px; odd ones carry tumour), tiled once at 112 px / 1 um/px,
embedded by a CNN (resnet18d) and a hierarchical ViT (pvt_v2_b0). No pretrained weights can be downloaded here, so
both encoders have (seeded) random weights: the weakest features an encoder gives. Split fixed by patient
(data seed 0: 32 train / 16 val / 16 test slides); the seed varies the MIL model's initialisation and slide order.
Each step is a plain `medconv` command (printed before it runs); records.csv gets a row per finished run, so a
rerun skips what is done.

    python docs/mil/run_evidence.py --out runs/mil_evidence          (records: docs/mil/records.csv)
    python docs/mil/run_evidence.py --report                          (tables from the records only)
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from medconv.ablation.report import read_test_metrics, summarise, to_markdown

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ENCODERS = {"cnn": "resnet18d", "vit": "pvt_v2_b0"}
AGGREGATORS = {"abmil": [], "clam_sb": ["configs/mil/clam_sb.yaml"], "transmil": ["configs/mil/transmil.yaml"]}
SLIDES = ["--n-slides", "64", "--seed", "7", "--width", "3072", "--height", "2304", "--difficulty", "hard"]
TILES = ["--tile-size", "112", "--target-mpp", "1.0"]
FIT = ["--data.init_args.val_fraction", "0.25", "--data.init_args.test_fraction", "0.25", "--data.init_args.seed", "0",
       "--data.init_args.num_workers", "0", "--trainer.max_epochs", "20", "--trainer.accelerator", "cpu",
       "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false"]


def medconv(args: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "medconv.cli", *args]
    print("$ medconv " + shlex.join(args), flush=True)
    start = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    print(f"  ({time.time() - start:.0f} s, log {log})", flush=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}); see {log}")


def prepare(out: Path) -> Path:
    """Slides, one coords store per slide, and each encoder's features (every step skips finished work)."""
    data = out / "data"
    logs = out / "logs"
    medconv(["demo-data", "wsi", "--out", str(data), *SLIDES], logs / "data.log")
    medconv(["tile", str(data / "slides"), "--out", str(data / "coords"), *TILES], logs / "data.log")
    for name in ENCODERS.values():
        medconv(["embed", name, str(data / "slides"), "--out", str(data / f"features_{name}"), "--coords-dir",
                 str(data / "coords"), *TILES, "--num-workers", "1"], logs / f"embed_{name}.log")
    return data


def run_dir(root: Path) -> Path:
    return max(root.glob("*/version_*"), key=lambda p: p.stat().st_mtime)


def fit_test_infer(family: str, aggregator: str, seed: int, data: Path, out: Path) -> dict:
    encoder = ENCODERS[family]
    name = f"{encoder}_{aggregator}_s{seed}"
    root, log = out / "runs" / name, out / "logs" / f"{name}.log"
    configs = [a for c in ["configs/wsi_abmil.yaml", *AGGREGATORS[aggregator]] for a in ("--config", c)]
    start = time.time()
    medconv(["fit", *configs, "--data.init_args.manifest", str(data / "manifest.csv"), "--data.init_args.features_dir",
             str(data / f"features_{encoder}"), *FIT, "--seed_everything", str(seed), "--trainer.default_root_dir", str(root)], log)
    run = run_dir(root)
    medconv(["test", "--config", str(run / "config.yaml"), "--ckpt_path", "best"], log)
    report = max(run.glob("eval/test-*/test_metrics.json"), key=lambda p: p.stat().st_mtime)
    test_slides = pd.read_csv(max(run.glob("eval/test-*/test_predictions.csv"), key=lambda p: p.stat().st_mtime))["slide_id"]
    slides = [str(data / "slides" / f"{s}.tif") for s in sorted(set(test_slides))]
    infer_out = out / "infer" / name
    medconv(["infer", str(run), *slides, "--out", str(infer_out), "--features-dir", str(data / f"features_{encoder}"),
             "--masks", str(data / "manifest.csv"), "--num-workers", "1"], log)
    quality = json.loads((infer_out / "quality.json").read_text())
    row = {"encoder": encoder, "family": family, "aggregator": aggregator, "seed": seed, **read_test_metrics(report),
           "attention_auroc": quality["tile_within_tumour"]["mean_auroc"],
           "attention_auroc_pooled": quality["tile"]["auroc"], "seconds": round(time.time() - start), "run": str(run)}
    return row


def report(records: pd.DataFrame) -> str:
    slide = summarise(records, ["aggregator", "encoder"], "auroc")
    attention = summarise(records, ["aggregator", "encoder"], "attention_auroc")
    return ("### Held-out slide AUROC (16 test slides): mean over seeds, 95% t-interval\n\n" + to_markdown(slide)
            + "\n\n### Attention vs tumour masks: tile AUROC within each test tumour slide, averaged over those slides"
            + "\n\n" + to_markdown(attention) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "mil_evidence", help="runs and generated data (not committed)")
    parser.add_argument("--records", type=Path, default=HERE / "records.csv")
    parser.add_argument("--families", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--aggregators", nargs="+", default=["abmil"], choices=list(AGGREGATORS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--report", action="store_true", help="only print the tables from the records")
    args = parser.parse_args(argv)
    records = pd.read_csv(args.records) if args.records.is_file() else pd.DataFrame()
    if not args.report:
        data = prepare(args.out.resolve())
        for aggregator in args.aggregators:
            for family in args.families:
                for seed in args.seeds:
                    if len(records) and ((records.encoder == ENCODERS[family]) & (records.aggregator == aggregator)
                                         & (records.seed == seed)).any():
                        continue
                    row = fit_test_infer(family, aggregator, seed, data, args.out.resolve())
                    records = pd.concat([records, pd.DataFrame([row])], ignore_index=True)
                    records.to_csv(args.records, index=False)
                    print(f"  {row['encoder']} {aggregator} seed {seed}: test slide AUROC {row['auroc']:.3f}, "
                          f"attention AUROC {row['attention_auroc']:.3f}", flush=True)
    table = report(records)
    print(table)
    args.records.with_name("results.md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
