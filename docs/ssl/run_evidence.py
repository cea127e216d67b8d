"""The SSL evidence of docs/ssl.md, CPU size: does masked-image-modelling pretraining on unlabelled in-domain
images beat random init when only 5% of the training labels are used?

For each modality (hard demo mammograms, hard demo slide tiles) and backbone (a CNN and a hierarchical ViT):
pretrain once on the train split (labels ignored), then fine-tune from random init and from the export with
seeds 0, 1, 2 on 5% of the labels, and test each fine-tune on the held-out patients with `medconv test`. Every
step is a plain `medconv` command (printed before it runs); records.csv gets one row per test as it finishes,
so a rerun skips what is done. The split and the 5% subset are fixed (data seed 0); the seed varies the
initialisation of the head (and of the backbone for random init), augmentation and batch order.

    python docs/ssl/run_evidence.py --out runs/ssl_evidence          (records: docs/ssl/records.csv)
    python docs/ssl/run_evidence.py --report                          (tables from the records only)
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

from medconv.ablation.report import paired_difference, read_test_metrics, summarise, to_markdown

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
C = REPO / "configs"
BACKBONES = {"cnn": "resnet18d", "vit": "pvt_v2_b0"}
RECIPES = {"cnn": "mim_resnet.yaml", "vit": "mim_pvt.yaml"}
PRETRAIN = {
    "mammo": [C / "pretrain" / "{recipe}", C / "ablation" / "ssl_mammo_pretrain.yaml"],
    "wsi": [C / "pretrain" / "{recipe}", C / "pretrain" / "on_wsi.yaml", C / "ablation" / "ssl_wsi_pretrain.yaml"],
}
FINETUNE = {
    "mammo": [C / "mammo_convnext.yaml", C / "quickstart_cpu.yaml", C / "ablation" / "ssl_mammo_finetune.yaml"],
    "wsi": [C / "wsi_convnext.yaml", C / "ablation" / "ssl_wsi_finetune.yaml"],
}
DATA_ARGS = {  # generated data shared by every run of a modality (pretraining data lives one level down)
    "mammo": {"pretrain": ["--data.init_args.source.init_args.demo.init_args.root", "{data}/demo_mammo",
                           "--data.init_args.source.init_args.cache_dir", "{data}/cache"],
              "finetune": ["--data.init_args.demo.init_args.root", "{data}/demo_mammo", "--data.init_args.cache_dir", "{data}/cache"]},
    "wsi": {"pretrain": ["--data.init_args.source.init_args.demo.init_args.root", "{data}/demo_wsi"],
            "finetune": ["--data.init_args.demo.init_args.root", "{data}/demo_wsi"]},
}


def medconv(args: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "medconv.cli", *args]
    print("$ medconv " + shlex.join(args), flush=True)
    start = time.time()
    with log.open("a") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    print(f"  ({time.time() - start:.0f} s, log {log})", flush=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}); see {log}")


def configs(paths: list[Path], recipe: str = "") -> list[str]:
    return [a for p in paths for a in ("--config", str(p).format(recipe=recipe))]


def model_args(family: str) -> list[str]:
    # quickstart_cpu.yaml's avgmax pooling is ResNet's; PVT-v2 pools its own way. Neither changes the weights.
    return ["--model.init_args.backbone.init_args.name", BACKBONES[family]] + (
        ["--model.init_args.backbone.init_args.model_args", "{}"] if family == "vit" else [])


def _run_dir(root: Path) -> Path | None:
    """The run `medconv fit` made under `root` (`<root>/<last config's name>/version_N`)."""
    runs = sorted(root.glob("*/version_*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def pretrain(modality: str, family: str, out: Path, data: Path) -> Path:
    root = out / "pretrain" / modality / family
    run = _run_dir(root)
    if run is not None and (root / "finished.json").is_file():
        return run / "encoder.safetensors"
    args = ["fit", *configs(PRETRAIN[modality], RECIPES[family]), *model_args(family), "--trainer.default_root_dir", str(root),
            *[a.format(data=data) for a in DATA_ARGS[modality]["pretrain"]]]
    start = time.time()
    root.mkdir(parents=True, exist_ok=True)
    medconv(args, root / "pretrain.log")
    (root / "finished.json").write_text(json.dumps({"seconds": round(time.time() - start)}))
    return _run_dir(root) / "encoder.safetensors"


def finetune_and_test(modality: str, family: str, init: str, seed: int, encoder: Path, out: Path, data: Path) -> dict:
    name = f"{modality}_{family}_{init}_s{seed}"
    root = out / "finetune" / name
    args = ["fit", *configs(FINETUNE[modality]), *model_args(family), "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(root), *[a.format(data=data) for a in DATA_ARGS[modality]["finetune"]]]
    if init == "ssl":
        args += ["--model.init_args.backbone.init_args.pretrained_path", str(encoder),
                 "--model.init_args.backbone.init_args.strict_weights", "true"]
    start = time.time()
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    medconv(args, log)
    run = _run_dir(root)
    medconv(["test", "--config", str(run / "config.yaml"), "--ckpt_path", "best"], log)
    report = max(run.glob("eval/test-*/test_metrics.json"), key=lambda p: p.stat().st_mtime)
    row = {"modality": modality, "family": family, "backbone": BACKBONES[family], "init": init, "seed": seed,
           **read_test_metrics(report), "seconds": round(time.time() - start), "run": str(run)}
    group = {"mammo": "exam", "wsi": "slide"}[modality]
    row |= {k.replace("/", "_"): v for k, v in read_test_metrics(report, f"{group}/auroc").items() if k.startswith(group)}
    return row


def report(records: pd.DataFrame) -> str:
    arms = summarise(records, ["modality", "backbone", "init"], "auroc")
    diff = paired_difference(records, ["modality", "backbone"], "init", "ssl", "random", "auroc")
    return ("### Test AUROC (tile or image level) by arm: mean over seeds, 95% t-interval\n\n" + to_markdown(arms)
            + "\n\n### SSL minus random init, paired by seed\n\n" + to_markdown(diff) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ssl_evidence", help="runs and generated data (not committed)")
    parser.add_argument("--records", type=Path, default=HERE / "records.csv")
    parser.add_argument("--modalities", nargs="+", default=["mammo", "wsi"], choices=["mammo", "wsi"])
    parser.add_argument("--families", nargs="+", default=["cnn", "vit"], choices=list(BACKBONES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--report", action="store_true", help="only print the tables from the records")
    args = parser.parse_args(argv)
    records = pd.read_csv(args.records) if args.records.is_file() else pd.DataFrame()
    if not args.report:
        data = args.out / "data"
        for modality in args.modalities:
            for family in args.families:
                encoder = pretrain(modality, family, args.out, data)
                for seed in args.seeds:
                    for init in ("random", "ssl"):
                        if len(records) and ((records.modality == modality) & (records.family == family)
                                             & (records.init == init) & (records.seed == seed)).any():
                            continue
                        row = finetune_and_test(modality, family, init, seed, encoder, args.out, data)
                        records = pd.concat([records, pd.DataFrame([row])], ignore_index=True)
                        records.to_csv(args.records, index=False)
                        print(f"  {modality} {family} {init} seed {seed}: test AUROC {row['auroc']:.3f}", flush=True)
    table = report(records)
    print(table)
    (args.records.with_name("results.md")).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
