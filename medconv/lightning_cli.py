"""LightningCLI for `medconv fit | validate | test | predict`.

What the data decides is linked into the model (image size and channels into the backbone, the number of
classes into the head). Every run gets one directory, `<save_dir>/<experiment>/version_N`, shared by the CSV
and TensorBoard loggers, holding config.yaml, metrics.csv, checkpoints/, predictions and plots.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from medconv.errors import MedconvError

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


def _num_classes(data) -> int:  # noqa: ANN001
    """Reading the classes may read the manifest; its errors end the run cleanly (jsonargparse would
    otherwise print a traceback from inside the link)."""
    try:
        return data.num_classes
    except MedconvError as err:
        print(f"medconv: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


class MedconvCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.image_size", "model.init_args.backbone.init_args.img_size", apply_on="parse")
        parser.link_arguments("data.init_args.in_chans", "model.init_args.backbone.init_args.in_chans", apply_on="parse")
        parser.link_arguments("data", "model.init_args.num_classes", compute_fn=_num_classes, apply_on="instantiate")
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
                self._keep_metrics = _set_aside(resume_dir / "metrics.csv")
            else:
                version = f"version_{next_version(root)}"
        for lg in loggers:
            lg.init_args.save_dir = str(save_dir)
            lg.init_args.name = name
            lg.init_args.version = version


    def after_fit(self) -> None:
        """A resumed run's metrics.csv holds the epochs since the resume: prepend the earlier ones."""
        kept = getattr(self, "_keep_metrics", None)
        if kept is None or not kept.is_file() or not self.trainer.is_global_zero:
            return
        import pandas as pd

        current = kept.with_name("metrics.csv")
        merged = pd.concat([pd.read_csv(kept), pd.read_csv(current)], ignore_index=True) if current.is_file() else pd.read_csv(kept)
        tmp = current.with_name(".metrics.merged.csv")
        merged.to_csv(tmp, index=False)
        tmp.replace(current)
        kept.unlink()


def _set_aside(metrics: Path) -> Path | None:
    """Lightning's CSV writer deletes metrics.csv in an existing run directory; a resume keeps its history
    (merged back by `after_fit`; left as metrics.before_resume.csv if the resumed run dies)."""
    if not metrics.is_file() or os.environ.get("LOCAL_RANK") not in (None, "0"):
        return None
    kept = metrics.with_name("metrics.before_resume.csv")
    metrics.replace(kept)
    return kept


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
