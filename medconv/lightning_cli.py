"""LightningCLI for `medconv fit | validate | test | predict`.

What the data decides is linked into the model (image size and channels into the backbone, the number of
classes into the head). Every run gets one directory, `<save_dir>/<experiment>/version_N`, shared by the CSV
and TensorBoard loggers, holding config.yaml, metrics.csv, checkpoints/, predictions and plots.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

RUNS_DIR = "runs"


def default_precision() -> str:
    """bf16 mixed precision where the GPU supports it; full precision on CPU (bf16 there is slower)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed" if torch.cuda.is_available() else "32-true"


def next_version(root: Path) -> int:
    found = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(found, default=-1) + 1


def latest_resumable(root: Path) -> Path | None:
    """The newest run directory under `root` that has checkpoints/last.ckpt."""
    candidates = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: int(p.parts[-3].split("_")[1]))
    return candidates[-1].parent.parent if candidates else None


class MedconvCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.image_size", "model.init_args.backbone.init_args.img_size", apply_on="parse")
        parser.link_arguments("data.init_args.in_chans", "model.init_args.backbone.init_args.in_chans", apply_on="parse")
        parser.link_arguments("data", "model.init_args.num_classes", compute_fn=lambda data: data.num_classes, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.eval_groups", compute_fn=lambda data: data.eval_groups, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.trainer
        if trainer.precision is None:
            trainer.precision = default_precision()
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        loggers = [lg for lg in loggers if lg is not None and hasattr(lg, "init_args")]
        if not loggers:
            return
        save_dir = Path(trainer.default_root_dir or loggers[0].init_args.get("save_dir") or RUNS_DIR)
        configs = cfg.get("config") or []
        name = loggers[0].init_args.get("name")
        name = name if name not in (None, "", "lightning_logs") else (Path(str(configs[0])).stem if configs else "medconv")
        root = save_dir / name
        version = loggers[0].init_args.get("version")
        if version is None:
            resume_dir = latest_resumable(root) if self.subcommand == "fit" and cfg.get("ckpt_path") == "last" else None
            if resume_dir is not None:
                version = resume_dir.name
                cfg.ckpt_path = str(resume_dir / "checkpoints" / "last.ckpt")
            else:
                version = f"version_{next_version(root)}"
        for lg in loggers:
            lg.init_args.save_dir = str(save_dir)
            lg.init_args.name = name
            lg.init_args.version = version


def run_lightning(argv: list[str]) -> MedconvCLI:
    import medconv.models  # noqa: F401  (registers GResNet with timm)

    return MedconvCLI(
        args=None if argv == sys.argv[1:] else argv,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
