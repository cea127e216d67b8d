"""LightningCLI for `medconv fit | validate | test | predict`.

What the data decides is linked into the model (image size and channels into the backbone or MIL tile encoder,
the number of classes into the head, the feature bags' width into a MIL aggregator). Every run gets one
directory, `<save_dir>/<experiment>/version_N`, shared by the CSV and TensorBoard loggers, holding config.yaml,
metrics.csv, checkpoints/, predictions and plots.

The callbacks that write a run's files (reports with CIs, predictions, the encoder export) belong to its recipe
and are listed in its YAML (configs/base/trainer.yaml, mil_trainer.yaml, pretrain_trainer.yaml), where a user sees
and configures them. The LightningModules do not return them from `configure_callbacks()`: Lightning lets those replace every
trainer callback of the same type, which would drop the options a config gives them, and a LightningModule used from Python
would write run files nobody asked for. Because a `trainer.callbacks` list in a later --config replaces the earlier
list (`callbacks+:` extends it), and older runs' saved configs may lack one, the CLI checks the final list by type
against `RUN_CALLBACKS` and puts back what the LightningModule's run needs, with a warning naming it.

`--ckpt_path FILE` loads the checkpoint's weights into the model that the config builds, as `best` / `last` do.
LightningCLI would first re-apply the checkpoint's `hyper_parameters` over the parsed config; medconv does not, since
the config is authoritative: `fit` saves it complete beside the checkpoints, while the hyper-parameters lack the
injected modules (backbone, aggregator, optimiser), carry link placeholders that a LightningModule may not accept (`in_dim:
null` for a classifier), and would override the command line. Instead the file is checked before any data is read:
it exists, holds a Lightning checkpoint of weights only, and was written by the LightningModule class the config builds.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from medconv.callbacks.run_config import SaveRunConfig
from medconv.errors import CheckpointError, MedconvError
from medconv.precision import default_precision
from medconv.run_dirs import eval_dir, is_external, latest_resumable, next_version, resolve_checkpoint, run_of

EVAL_COMMANDS = ("validate", "test", "predict")

RUNS_DIR = "runs"


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
        _ensure_run_callbacks(trainer, str(cfg.model.get("class_path", "")))
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
                if cfg.data.init_args.get("n_folds") is not None:  # a k-fold run's config: all of it, not one fold
                    cfg.data.init_args.n_folds = None
            _no_pretrained_download(cfg)
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

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:  # jsonargparse wraps what a nested class raises (a union's subtypes) in a ValueError
            cause = _medconv_cause(err)
            if cause is None:
                raise
            raise cause from None  # the user's error (unknown model, weights not in the cache, ...): one message
        _default_mean_std(self.config[self.subcommand] if self.subcommand else self.config, self.datamodule, self.model)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's (private, Lightning >= 2.3) hook that re-applies a checkpoint's hyper-parameters: here it checks
        the file instead (module docstring); tests/integration/test_lightning_cli_runs.py fails if it stops being
        called. `best` / `last` are resolved inside the run later, in `before_instantiate_classes`."""
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else self.config
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path in (None, "best", "last"):
            return
        resolve_checkpoint(ckpt_path, None)  # a missing file: the error says what to pass instead
        written_by = _checkpoint_task(Path(ckpt_path))
        configured = str(cfg.model.get("class_path", "")) if cfg.get("model") else ""
        if written_by and configured and not _same_class(written_by, configured):
            hint = (" To start a classifier from a pretraining run, pass its encoder.safetensors as "
                    "--model.init_args.backbone.init_args.pretrained_path."
                    if _subclass(_import(written_by), "medconv.tasks.PretrainModule") else "")
            raise CheckpointError(f"{ckpt_path}: a checkpoint of {written_by}, but the config builds {configured}. Pass the "
                                  f"config.yaml of the run that wrote it (--config <run>/config.yaml).{hint}")

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


@dataclass(frozen=True)
class RunCallbacks:
    """The callbacks a LightningModule's run writes its files with, and the base config that lists them."""

    needs: tuple[str, ...]
    recipe: str
    #: a writer that writes the wrong files for this LightningModule -> the one that writes its files
    replaces: dict[str, str] = field(default_factory=dict)


#: By LightningModule class (subclasses count); callbacks are matched by type, so aliases and subclasses satisfy a need.
RUN_CALLBACKS: dict[str, RunCallbacks] = {
    "medconv.tasks.ClassificationModule": RunCallbacks(
        ("medconv.callbacks.RunOutputs", "medconv.callbacks.PredictionCSVWriter"), "configs/base/trainer.yaml"),
    "medconv.tasks.MILModule": RunCallbacks(
        ("medconv.callbacks.RunOutputs", "medconv.callbacks.BagPredictionWriter"), "configs/base/mil_trainer.yaml",
        replaces={"medconv.callbacks.PredictionCSVWriter": "medconv.callbacks.BagPredictionWriter"}),
    "medconv.tasks.PretrainModule": RunCallbacks(("medconv.callbacks.EncoderExport",), "configs/base/pretrain_trainer.yaml"),
}


def _ensure_run_callbacks(trainer, model_class_path: str) -> None:  # noqa: ANN001 -- the parsed `trainer` section
    """Put back what the LightningModule's run needs (reports with CIs, predictions, the encoder export) when the final callback
    list lacks it, and swap a writer that would write the wrong files for it; warn about each change, since the
    config itself should list them."""
    model_class = _import(model_class_path)
    spec = next((v for k, v in RUN_CALLBACKS.items() if model_class is not None and _subclass(model_class, k)), None)
    if spec is None:
        return
    callbacks = trainer.get("callbacks") or []
    callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
    changes = []
    for callback in callbacks:
        path = str(getattr(callback, "class_path", ""))
        wrong = next((w for w in spec.replaces if _import(path) is _import(w)), None)
        if wrong is not None:
            callback.class_path = spec.replaces[wrong]
            changes.append(f"{path} replaced by {spec.replaces[wrong]} (the files a {model_class.__name__} run writes)")
    classes = [_import(str(getattr(c, "class_path", ""))) for c in callbacks]
    for need in spec.needs:
        if not any(cls is not None and _subclass(cls, need) for cls in classes):
            callbacks.append(Namespace(class_path=need, init_args=Namespace()))
            changes.append(f"{need} added with its defaults")
    trainer.callbacks = callbacks
    if changes:
        rank_zero_warn(
            f"medconv: trainer.callbacks: {'; '.join(changes)}. A {model_class.__name__} run writes its files with "
            f"{', '.join(n.rsplit('.', 1)[-1] for n in spec.needs)}; list them in the config (as {spec.recipe} does) "
            "to set their options. A trainer.callbacks list in a later --config replaces the earlier list (`callbacks+:` "
            "extends it)."
        )


def _subclass(cls: type | None, class_path: str) -> bool:
    base = _import(class_path)
    return base is not None and isinstance(cls, type) and issubclass(cls, base)


def _medconv_cause(err: BaseException) -> MedconvError | None:
    """The MedconvError an exception was raised from, if any (followed through its causes)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MedconvError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _no_pretrained_download(cfg) -> None:  # noqa: ANN001
    """Evaluating a checkpoint replaces the backbone's weights: do not fetch its starting weights again."""
    backbone = cfg.get("model.init_args.backbone.init_args") if cfg.get("model") else None
    if isinstance(backbone, Namespace) and backbone.get("pretrained"):
        backbone.pretrained = False


def _default_mean_std(cfg, data, model) -> None:  # noqa: ANN001
    """Data whose config leaves mean/std unset (null) is normalised as the backbone's pretrained weights were
    (their pretrained_cfg); written into the config too, so config.yaml and the run record say what was used."""
    stats = getattr(getattr(model, "backbone", None), "pretrained_mean_std", None)
    args = cfg.get("data.init_args") if cfg.get("data") else None
    if stats is None or args is None or not hasattr(data, "mean") or "mean" not in args or "std" not in args:
        return
    if args.get("mean") is not None or args.get("std") is not None:
        return
    mean, std = stats
    if len(mean) != len(getattr(data, "mean", None) or mean):
        return  # another channel count than the data's own default: left to the data
    data.mean, data.std = tuple(mean), tuple(std)
    args.mean, args.std = list(mean), list(std)


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
            save_config_callback=SaveRunConfig,  # config.yaml, and the config into each checkpoint's run record
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except pickle.UnpicklingError as err:
        raise CheckpointError(_pickled_objects(_arg(argv, "--ckpt_path") or "the checkpoint")) from err
    except RuntimeError as err:
        if not str(err).startswith("Error(s) in loading state_dict"):
            raise
        details = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(
            f"{_arg(argv, '--ckpt_path') or 'the checkpoint'}: its weights do not fit the model that the config builds "
            f"({details[:300]}). Pass the config.yaml of the run that wrote it (--config <run>/config.yaml)."
        ) from err


def _pickled_objects(ckpt: str) -> str:
    return (f"{ckpt}: holds Python objects other than weights (pickled code can run when loaded), so medconv does not "
            "load it. Use a checkpoint written by medconv/Lightning, or re-save only its tensors.")


def _checkpoint_task(path: Path) -> str | None:
    """The class path of the LightningModule that wrote a Lightning checkpoint (None when it does not say); a CheckpointError
    when the file is not a Lightning checkpoint of weights only. Memory-mapped: the tensors are not read."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a checkpoint written by `medconv fit` (not a PyTorch checkpoint file). Pass "
                              "a .ckpt from <run>/checkpoints/, or `best` / `last` with --config <run>/config.yaml.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_pickled_objects(str(path))) from err
    except (RuntimeError, OSError, ValueError, EOFError) as err:
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({err}).") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: holds weights but is not a checkpoint written by `medconv fit` (no Lightning state_dict). To start "
            "a model from these weights, pass them as --model.init_args.backbone.init_args.pretrained_path instead."
        )
    hparams = ckpt.get("hyper_parameters") or {}
    record = ckpt.get("medconv") if isinstance(ckpt.get("medconv"), dict) else {}
    written_by = hparams.get("_class_path") or (record.get("model") or {}).get("class_path")
    return str(written_by) if written_by else None


def _import(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _same_class(a: str, b: str) -> bool:
    """Class paths name the same class (a re-export or alias counts); an unimportable one (a class renamed since the
    checkpoint was written) is not held against the checkpoint."""
    class_a, class_b = _import(a), _import(b)
    return class_a is None or class_b is None or class_a is class_b


def _arg(argv: list[str], flag: str) -> str | None:
    for i, value in enumerate(argv):
        if value == flag and i + 1 < len(argv):
            return argv[i + 1]
        if value.startswith(flag + "="):
            return value.split("=", 1)[1]
    return None
