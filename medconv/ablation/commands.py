"""The `medconv fit` / `medconv test` argument lists of a sweep's runs: pure functions of the sweep and a run.

The sweep owns the keys that define an arm (label fraction, seeds, split seed, steps, init weights); `overrides`
may set anything else, and a key the sweep owns is refused rather than silently overridden.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medconv.ablation.sweep import Backbone, Init, PretrainRun, Run, Sweep
from medconv.errors import ConfigError

BACKBONE = "model.init_args.backbone.init_args"
TIMER = "medconv.ablation.timing.StepTimer"
MANAGED = ("seed_everything", "data.init_args.seed", "data.init_args.split_seed", "data.init_args.label_fraction",
           "trainer.max_steps", "trainer.max_epochs", "trainer.val_check_interval", "trainer.check_val_every_n_epoch",
           "trainer.default_root_dir", f"{BACKBONE}.pretrained_path", f"{BACKBONE}.strict_weights", f"{BACKBONE}.name",
           f"{BACKBONE}.pretrained",
           "data.init_args.n_folds", "data.init_args.fold")
PRETRAIN_MANAGED = ("seed_everything", "data.init_args.source.init_args.seed", "data.init_args.source.init_args.split_seed",
                    "trainer.default_root_dir", f"{BACKBONE}.name", "data.init_args.source.init_args.n_folds",
                    "data.init_args.source.init_args.fold", "data.init_args.seed", "data.init_args.split_seed",
                    "data.init_args.n_folds", "data.init_args.fold")


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _flags(pairs: dict[str, Any]) -> list[str]:
    return [f"--{key}={_value(value)}" for key, value in pairs.items()]


def _configs(paths: tuple[str, ...] | list[str]) -> list[str]:
    return [a for p in paths for a in ("--config", p)]


def _check_overrides(overrides: dict[str, Any], managed: tuple[str, ...], key: str) -> None:
    clash = sorted(k for k in overrides if k.lstrip("-") in managed)
    if clash:
        raise ConfigError(f"{key}: {clash} are set by the sweep itself (fractions, seeds, split_seed, folds, steps, inits, "
                          "backbones); change those keys of the sweep file instead")


def _backbone_flags(backbone: Backbone) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if backbone.timm_name:
        flags[f"{BACKBONE}.name"] = backbone.timm_name
    if backbone.model_args is not None:
        flags[f"{BACKBONE}.model_args"] = backbone.model_args
    return flags


def _fold_flags(sweep: Sweep, fold: int | None, prefix: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """k-fold: the run's test fold of the sweep's `folds` (the same folds everywhere, drawn by split_seed); the fold
    is the test set, so a test fraction from the base configs is set to 0 and one in the overrides is refused."""
    if sweep.folds is None:
        return {}
    key = f"{prefix}.test_fraction"
    if overrides.get(key) or overrides.get(f"--{key}"):
        raise ConfigError(f"folds: {sweep.folds}: each run's test set is its fold; drop {key} from the overrides")
    return {f"{prefix}.n_folds": sweep.folds, f"{prefix}.fold": fold, key: 0.0}


def weights_path(init: Init, backbone: Backbone) -> str | None:
    """The weights a `pretrained` / `ssl_export` init loads for this backbone."""
    return init.path.replace("{backbone}", backbone.name) if init.path else None


def weights_name(init: Init, backbone: Backbone) -> str | None:
    """The timm name whose pretrained weights a `pretrained` init without a file loads for this backbone: timm_name
    plus its pretrained_tag, else timm_name as it is (its own tag, an hf-hub:/local-dir: source, or timm's default)."""
    if init.kind != "pretrained" or init.path:
        return None
    if not backbone.timm_name:
        raise ConfigError(f"backbone {backbone.name}: init {init.name} loads the backbone's timm weights, so it needs "
                          "timm_name (and pretrained_tag, e.g. timm_name: convnext_tiny, pretrained_tag: fb_in1k)")
    return f"{backbone.timm_name}.{backbone.pretrained_tag}" if backbone.pretrained_tag else backbone.timm_name


def fit_args(sweep: Sweep, run: Run, root: Path, encoder: Path | None = None) -> list[str]:
    """`medconv fit` for one fine-tune; `encoder` is its pretraining run's export (a `pretrain` init)."""
    _check_overrides(sweep.overrides, MANAGED, "overrides")
    flags: dict[str, Any] = {
        **sweep.overrides,
        **_backbone_flags(run.backbone),
        "seed_everything": run.seed,
        "data.init_args.seed": run.seed,
        "data.init_args.split_seed": sweep.split_seed,
        "data.init_args.label_fraction": run.fraction,
        **_fold_flags(sweep, run.fold, "data.init_args", sweep.overrides),
        # Compute matching: the same optimisation steps at every fraction, validation on a fixed step grid.
        "trainer.max_steps": sweep.steps,
        "trainer.max_epochs": -1,
        "trainer.val_check_interval": min(sweep.val_every_steps, sweep.steps),
        "trainer.check_val_every_n_epoch": None,
        "trainer.default_root_dir": str(root),
    }
    if run.init.kind == "pretrain":
        if encoder is None:
            raise ConfigError(f"{run.run_id}: needs the encoder of {run.pretrain_id}")
        # An SSL export holds exactly the timm keys; a supervised first stage's checkpoint also holds its own head.
        flags |= {f"{BACKBONE}.pretrained_path": str(encoder),
                  f"{BACKBONE}.strict_weights": run.init.objective != "supervised"}
    elif run.init.kind == "pretrained" and not run.init.path:  # timm's weights (hub cache), adapted and reported
        flags |= {f"{BACKBONE}.name": weights_name(run.init, run.backbone), f"{BACKBONE}.pretrained": True}
    elif run.init.kind in ("pretrained", "ssl_export"):
        # An SSL export holds exactly the timm keys (strict); other weights files may carry a classifier head.
        flags |= {f"{BACKBONE}.pretrained_path": weights_path(run.init, run.backbone),
                  f"{BACKBONE}.strict_weights": run.init.kind == "ssl_export"}
    return ["fit", *_configs([*sweep.configs, *run.backbone.configs]), *_flags(flags), f"--trainer.callbacks+={TIMER}"]


def pretrain_args(sweep: Sweep, run: PretrainRun, root: Path) -> list[str]:
    """`medconv fit` for a pretraining run: the train patients of the sweep's split (or of its fold) only."""
    _check_overrides(sweep.pretrain_overrides, PRETRAIN_MANAGED, "pretrain_overrides")
    if not run.backbone.timm_name:
        raise ConfigError(f"backbone {run.backbone.name}: a `pretrain` init needs its timm name (timm_name: ...), "
                          "since its fine-tune configs cannot configure a pretraining run")
    # An SSL datamodule wraps the labelled one as its `source`; a supervised first stage is a labelled datamodule.
    source = "data.init_args" if run.init.objective == "supervised" else "data.init_args.source.init_args"
    flags: dict[str, Any] = {
        **sweep.pretrain_overrides,
        **_backbone_flags(run.backbone),
        "seed_everything": sweep.pretrain_seed,
        f"{source}.seed": sweep.pretrain_seed,
        f"{source}.split_seed": sweep.split_seed,
        **_fold_flags(sweep, run.fold, source, sweep.pretrain_overrides),  # only the fold's training patients
        "trainer.default_root_dir": str(root),
    }
    if run.init.steps is not None:
        flags |= {"trainer.max_steps": run.init.steps, "trainer.max_epochs": -1}
    return ["fit", *_configs([*run.init.configs, *run.backbone.pretrain_configs]), *_flags(flags)]


def evaluate_args(run_dir: Path) -> list[str]:
    """`medconv test` of a fit's best checkpoint on the held-out patients, written under `<run>/eval/`."""
    return ["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "best"]
