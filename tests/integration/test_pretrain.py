"""`medconv fit` with a configs/pretrain recipe end to end: pretrain on unlabelled demo mammograms, export the encoder,
resume, then fine-tune a classifier from the export with a strict load."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medconv.lightning_cli import run_lightning

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
TINY = str(CONFIGS / "tests" / "tiny_pretrain.yaml")
pytestmark = pytest.mark.integration


def _pretrain_args(data: Path, root: Path, recipe: str = "mim_convnext.yaml", *extra: str) -> list[str]:
    return ["fit", "--config", str(CONFIGS / "pretrain" / recipe), "--config", TINY, "--trainer.default_root_dir", str(root),
            "--data.init_args.source.init_args.demo.init_args.root", str(data / "demo"),
            "--data.init_args.source.init_args.cache_dir", str(data / "cache"), *extra]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, pretraining run) shared by the tests of this module."""
    data, root = tmp_path_factory.mktemp("pretrain_data"), tmp_path_factory.mktemp("pretrain_runs")
    run_lightning(_pretrain_args(data, root))
    return data, root / "tiny_pretrain" / "version_0"


def test_pretraining_exports_an_encoder_and_logs_its_loss(pretrained: tuple[Path, Path]) -> None:
    _, run = pretrained
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["method"] == "MaskedImageModelling" and meta["timm_name"] == "convnext_atto"
    assert meta["in_chans"] == 1 and meta["img_size"] == [128, 64] and meta["epochs"] == 2
    assert meta["data"]["source"]["class"] == "medconv.mammo.datamodule.MammoDataModule"
    weights = load_file(run / "encoder.safetensors")
    assert weights and not any(k.startswith(("backbone.", "model.", "objective.", "decoder")) for k in weights)
    metrics = pd.read_csv(run / "metrics.csv")
    losses = metrics["train/loss_epoch"].dropna()
    assert len(losses) == 2 and losses.notna().all()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # the probe ran at the last epoch on frozen features of labelled train images vs the val split
    probes = metrics[["probe/knn_auroc", "probe/linear_auroc"]].dropna()
    assert len(probes) == 1 and ((probes >= 0) & (probes <= 1)).all().all()
    assert (run / "mask_preview.png").stat().st_size > 1000


def test_resume_from_last_continues_the_run(pretrained: tuple[Path, Path]) -> None:
    data, run = pretrained
    before = load_file(run / "encoder.safetensors")
    steps_per_epoch = json.loads((run / "encoder.json").read_text())["global_step"] // 2
    run_lightning(_pretrain_args(data, run.parents[1], "mim_convnext.yaml", "--trainer.max_epochs", "3", "--ckpt_path", "last"))
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["epochs"] == 3 and meta["global_step"] == 3 * steps_per_epoch  # the same run, one more epoch
    after = load_file(run / "encoder.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not (run.parent / "version_1").exists()


def test_finetune_loads_the_export_strictly(pretrained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = pretrained
    cli = run_lightning([
        "fit", "--config", str(CONFIGS / "mammo_convnext.yaml"), "--config", str(CONFIGS / "quickstart_cpu.yaml"),
        "--config", str(CONFIGS / "tests" / "tiny_mammo.yaml"), "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path), "--data.init_args.demo.init_args.root", str(data / "demo"),
        "--data.init_args.cache_dir", str(data / "cache"), "--data.init_args.demo.init_args.n_patients", "16",
        "--data.init_args.demo.init_args.image_size", "[512, 400]", "--data.init_args.image_size", "[128, 64]",
        "--data.init_args.label_fraction", "0.5",
        "--model.init_args.backbone.init_args.name", "convnext_atto", "--model.init_args.backbone.init_args.model_args", "{}",
        "--model.init_args.backbone.init_args.pretrained_path", str(run / "encoder.safetensors"),
        "--model.init_args.backbone.init_args.strict_weights", "true",
    ])
    report = cli.model.backbone.weight_report
    assert report.ok and len(report.loaded) == len(load_file(run / "encoder.safetensors"))
    assert json.loads((Path(cli.trainer.log_dir) / "summary.json").read_text())["best_checkpoint"]


def test_dino_under_ddp_two_processes(pretrained: tuple[Path, Path], tmp_path: Path) -> None:
    """DINO's centre is all-reduced, the probe runs on rank 0 alone: two CPU processes must finish and export once."""
    import os
    import subprocess
    import sys

    data, _ = pretrained
    args = _pretrain_args(data, tmp_path, "dino_convnext.yaml", "--trainer.max_epochs", "1", "--trainer.strategy", "ddp",
                          "--trainer.devices", "2", "--model.init_args.objective.init_args.out_dim", "256",
                          "--model.init_args.objective.init_args.hidden_dim", "64", "--data.init_args.n_local", "2")[1:]
    result = subprocess.run([sys.executable, "-m", "medconv.cli", "fit", *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = sorted((tmp_path / "tiny_pretrain").glob("version_*"))
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["method"] == "DINO" and meta["epochs"] == 1
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["train/teacher_entropy"].notna().any() and metrics["probe/knn_auroc"].notna().sum() == 1
