"""LightningCLI for `medconv fit | validate | test | predict`.

What the data decides is linked into the model (image size and channels into the backbone or MIL tile encoder,
the number of classes into the head, the feature bags' width into a MIL aggregator). Every run gets one
directory, `<save_dir>/<experiment>/version_N`, shared by the CSV and TensorBoard loggers, holding config.yaml,
metrics.csv, checkpoints/, predictions and plots.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from medconv.errors import CheckpointError, MedconvError
from medconv.run_dirs import eval_dir, is_external, latest_resumable, next_version, resolve_checkpoint, run_of

EVAL_COMMANDS = ("validate", "test", "predict")

RUNS_DIR = "runs"


def default_precision() -> str:
    """Training: bf16 mixed precision where the GPU supports it; full precision on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed" if torch.cuda.is_available() else "32-true"


def native_cpu_bf16() -> bool:
    """The CPU computes in bf16 natively (AVX512-BF16 or AMX: recent Xeon and EPYC), where oneDNN's bf16 kernels
    run ~1.9x faster than fp32; on other CPUs bf16 is emulated and slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if callable(check))


def inference_precision(accelerator: str) -> str:
    """Inference and embedding: AMP on GPU as in training; bf16 autocast on CPUs with native bf16 (measured on an
    AVX512-BF16 EPYC: 1.9x the tiles/s for ConvNeXt-atto and PVT-v2-b0, tile probabilities within 0.004 of fp32,
    docs/benchmarks.md), else fp32. `--precision 32-true` keeps fp32 anywhere."""
    if accelerator != "cpu":
        return default_precision()
    return "bf16-mixed" if native_cpu_bf16() else "32-true"


def _num_classes(data) -> int:  # noqa: ANN001
    """Reading the classes may read the manifest; its errors end the run cleanly (jsonargparse would
    otherwise print a traceback from inside the link)."""
    try:
        return data.num_classes
    except MedconvError as err:
        print(f"medconv: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


def _feature_dim(data) -> int | None:  # noqa: ANN001
    """The width of a MIL datamodule's feature bags (None for other data, and for bags of tiles); errors as above."""
    try:
        return getattr(data, "feature_dim", None)
    except MedconvError as err:
        print(f"medconv: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


class MedconvCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.image_size", "model.init_args.backbone.init_args.img_size", apply_on="parse")
        parser.link_arguments("data.init_args.in_chans", "model.init_args.backbone.init_args.in_chans", apply_on="parse")
        parser.link_arguments("data", "model.init_args.num_classes", compute_fn=_num_classes, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.eval_groups", compute_fn=lambda data: data.eval_groups, apply_on="instantiate")
        # MIL (MILModule): the bags' feature width; a tile encoder (bag_source: tiles) is built for the data's tiles.
        parser.link_arguments("data", "model.init_args.in_dim", compute_fn=_feature_dim, apply_on="instantiate")
        parser.link_arguments("data.init_args.image_size", "model.init_args.encoder.init_args.img_size", apply_on="parse")
        parser.link_arguments("data.init_args.in_chans", "model.init_args.encoder.init_args.in_chans", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.trainer
        if trainer.precision is None:
            trainer.precision = default_precision()
        model_class = str(cfg.model.get("class_path", ""))
        _ensure_outputs_callback(trainer, pretraining=model_class.endswith("PretrainModule"), mil=model_class.endswith("MILModule"))
        _link_nested_input(cfg)
        configs = [str(c) for c in (cfg.get("config") or [])]
        if self.subcommand in EVAL_COMMANDS:
            run = run_of(cfg.get("ckpt_path"), configs)
            cfg.ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), run)
            if cfg.ckpt_path is None:
                raise CheckpointError(f"medconv {self.subcommand} needs weights to evaluate: pass --ckpt_path best|last "
                                      "(with --config <run>/config.yaml) or --ckpt_path FILE.ckpt")
            if run is not None and is_external(cfg.data, run):
                # Another manifest than the run's: evaluate all of it (its own split column still applies).
                cfg.data.init_args.test_fraction = 0.0
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        loggers = [lg for lg in loggers if lg is not None and hasattr(lg, "init_args")]
        if not loggers:
            return
        save_dir = Path(trainer.default_root_dir or loggers[0].init_args.get("save_dir") or RUNS_DIR)
        name = loggers[0].init_args.get("name")
        # Several --config files: the last is the most specific override and names what the run is.
        name = name if name not in (None, "", "lightning_logs") else (Path(configs[-1]).stem if configs else "medconv")
        root = save_dir / name
        version = loggers[0].init_args.get("version")
        if self.subcommand in EVAL_COMMANDS:
            save_dir, version = eval_dir(run if run is not None else root, self.subcommand)
            name = ""
        elif cfg.get("ckpt_path") == "last" and (resume_dir := _resumable(root, version)) is not None:
            version = resume_dir.name
            cfg.ckpt_path = str(resume_dir / "checkpoints" / "last.ckpt")
            self._keep_metrics = _set_aside(resume_dir / "metrics.csv")
        elif version is None or _occupied(root / str(version), cfg.get("ckpt_path")):
            # A saved run config names its version: fitting from it again starts a new run beside it.
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


def _resumable(root: Path, version: str | None) -> Path | None:
    """The named run if it has last.ckpt (resuming from its saved config), else the newest such run under root.
    None: `--ckpt_path last` then starts from scratch, so one command serves a job's first start and its restarts."""
    if version is not None and (root / str(version) / "checkpoints" / "last.ckpt").is_file():
        return root / str(version)
    return latest_resumable(root)


def _occupied(run: Path, ckpt_path: str | None) -> bool:
    """A run directory that holds files and is not the one being resumed."""
    resuming = ckpt_path is not None and Path(ckpt_path).resolve().is_relative_to(run.resolve())
    return run.is_dir() and any(run.iterdir()) and not resuming


def _ensure_outputs_callback(trainer, pretraining: bool = False, mil: bool = False) -> None:  # noqa: ANN001
    """Evaluation reports are part of every run, also when a config lists its own callbacks; a pretraining run
    always exports its encoder; a MIL run's predictions (attention and coords per slide besides the slide's
    probabilities) go through the MIL writer instead of the per-tile CSV writer."""
    callbacks = trainer.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    if mil:
        for callback in callbacks:
            if getattr(callback, "class_path", "").endswith("PredictionCSVWriter"):
                callback.class_path = "medconv.mil.writer.BagPredictionWriter"
    names = {getattr(c, "class_path", "").rsplit(".", 1)[-1] for c in callbacks}
    if not names & {"RunOutputs", "RunSummary"}:
        callbacks.append(Namespace(class_path="medconv.callbacks.RunOutputs", init_args=Namespace()))
    if pretraining and "EncoderExport" not in names:
        callbacks.append(Namespace(class_path="medconv.callbacks.EncoderExport", init_args=Namespace()))
    trainer.callbacks = callbacks


def _link_nested_input(cfg) -> None:  # noqa: ANN001
    """The parse-time links read `data.init_args.image_size` / `in_chans`; a datamodule that wraps another one (the
    pretraining data's `source`) keeps them one level down, where jsonargparse does not look: link them here."""
    data = cfg.get("data")
    backbone = cfg.get("model.init_args.backbone.init_args") if cfg.get("model") else None
    if data is None or backbone is None or data.get("init_args.image_size") is not None:
        return
    for value in vars(data.get("init_args") or Namespace()).values():
        inner = value.get("init_args") if isinstance(value, Namespace) else None
        if inner is not None and inner.get("image_size") is not None:
            backbone.img_size = inner.image_size
            backbone.in_chans = inner.get("in_chans", backbone.get("in_chans"))
            return


def run_lightning(argv: list[str]) -> MedconvCLI:
    import medconv.models  # noqa: F401  (registers GResNet with timm)

    try:
        return MedconvCLI(
            args=None if argv == sys.argv[1:] else argv,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{_arg(argv, '--ckpt_path') or 'the checkpoint'}: holds Python objects other than weights (pickled code "
            "can run when loaded), so medconv does not load it. Use a checkpoint written by medconv/Lightning, or "
            "re-save only its tensors."
        ) from err


def _arg(argv: list[str], flag: str) -> str | None:
    for i, value in enumerate(argv):
        if value == flag and i + 1 < len(argv):
            return argv[i + 1]
        if value.startswith(flag + "="):
            return value.split("=", 1)[1]
    return None
