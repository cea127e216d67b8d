"""Tiny fitted runs to export: a GResNet mammogram classifier with a `medconv test` report, and a masked-image-
modelling pretraining run (each one epoch of two steps on 16 demo patients at 128x64, ~5-10 s on 2 CPU cores).
The slide classifier is the session's `tiny_wsi_run` (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medconv.lightning_cli import run_lightning

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]


@pytest.fixture(scope="session")
def gresnet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/mammo_gresnet.yaml shrunk to gresnet_tiny on 1-channel 128x64 mammograms, then `medconv test` of
    its best checkpoint (a report under <run>/eval/test-*/)."""
    root = tmp_path_factory.mktemp("export_gresnet")
    cli = run_lightning([
        "fit", *(a for c in ("mammo_gresnet.yaml", "quickstart_cpu.yaml", "tests/tiny_mammo.yaml") for a in ("--config", str(CONFIGS / c))),
        *SHORT, "--trainer.default_root_dir", str(root / "runs"),
        "--data.init_args.demo.init_args.root", str(root / "demo"), "--data.init_args.cache_dir", str(root / "cache"),
        "--data.init_args.demo.init_args.n_patients", "16", "--data.init_args.demo.init_args.image_size", "[512, 400]",
        "--data.init_args.image_size", "[128, 64]", "--data.init_args.num_workers", "0",
        "--model.init_args.backbone.init_args.name", "gresnet_tiny",
        "--model.init_args.backbone.init_args.channels_last", "false",
    ])
    run = Path(cli.trainer.log_dir).resolve()
    run_lightning(["test", "--config", str(run / "config.yaml"), "--ckpt_path", "best"])
    assert list(run.glob("eval/test-*/test_metrics.json"))
    return run


@pytest.fixture(scope="session")
def mim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/pretrain/mim_convnext.yaml with configs/tests/tiny_pretrain.yaml (convnext_atto, 1 channel, 128x64)."""
    root = tmp_path_factory.mktemp("export_mim")
    cli = run_lightning([
        "fit", "--config", str(CONFIGS / "pretrain" / "mim_convnext.yaml"), "--config", str(CONFIGS / "tests" / "tiny_pretrain.yaml"),
        *SHORT, "--trainer.default_root_dir", str(root / "runs"),
        "--data.init_args.source.init_args.demo.init_args.root", str(root / "demo"),
        "--data.init_args.source.init_args.cache_dir", str(root / "cache"),
    ])
    return Path(cli.trainer.log_dir).resolve()
