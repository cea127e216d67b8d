"""A `supervised` init (the patch-to-image recipe: a lesion-patch classifier first, its best checkpoint initialising
the whole-image model) rides on the pretraining machinery: per backbone and fold, labelled data, best checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medconv.ablation import runner as runner_module
from medconv.ablation.commands import fit_args, pretrain_args
from medconv.ablation.records import record_path
from medconv.ablation.runner import Child, Runner
from medconv.ablation.sweep import expand, parse_sweep, pretrain_runs
from medconv.errors import ConfigError

from .conftest import write_test_outputs


def _raw(tmp_path: Path, **changes) -> dict:
    (tmp_path / "base.yaml").write_text("trainer: {}\n")
    (tmp_path / "patches.yaml").write_text("trainer: {}\n")
    raw = {"configs": ["base.yaml"], "backbones": [{"name": "resnet18d", "family": "cnn", "timm_name": "resnet18d"}],
           "inits": {"random": "random", "patch": {"supervised": ["patches.yaml"], "steps": 30}},
           "fractions": [0.25, 1.0], "seeds": [0], "split_seed": 3, "steps": 50, "folds": 2}
    return {**raw, **changes}


def test_a_supervised_first_stage_runs_per_fold_at_full_labels_only(tmp_path):
    sweep = parse_sweep(_raw(tmp_path), tmp_path)
    ids = {r.run_id for r in expand(sweep)}
    # it reads every training patient's annotations, so a 25% arm would see withheld labels: left out
    assert {i for i in ids if "-patch-" in i} == {"resnet18d-patch-f1-s0-fold0", "resnet18d-patch-f1-s0-fold1"}
    assert "resnet18d-random-f0.25-s0-fold1" in ids
    prun = pretrain_runs(sweep)[1]
    assert prun.run_id == "pretrain-resnet18d-patch-fold1" and prun.init.objective == "supervised"
    args = pretrain_args(sweep, prun, tmp_path / "pre")
    # a labelled datamodule: the split and fold flags go to data.init_args, not to an SSL source
    for flag in ("--data.init_args.split_seed=3", "--data.init_args.fold=1", "--data.init_args.n_folds=2",
                 "--trainer.max_steps=30"):
        assert flag in args
    assert not any(a.startswith("--data.init_args.source") for a in args)
    run = next(r for r in expand(sweep) if r.run_id == "resnet18d-patch-f1-s0-fold1")
    fit = fit_args(sweep, run, tmp_path / "root", tmp_path / "best.ckpt")
    # the first stage's checkpoint holds its own head: loaded non-strictly, with the report in the log
    assert f"--model.init_args.backbone.init_args.pretrained_path={tmp_path / 'best.ckpt'}" in fit
    assert "--model.init_args.backbone.init_args.strict_weights=false" in fit


def test_pretrain_and_supervised_in_one_init_are_refused(tmp_path):
    raw = _raw(tmp_path, inits={"both": {"supervised": ["patches.yaml"], "pretrain": ["patches.yaml"]}})
    with pytest.raises(ConfigError, match="not both"):
        parse_sweep(raw, tmp_path)


class FirstStageChild:
    """Stands in for `medconv fit` / `medconv test`: a supervised first stage leaves a best checkpoint (or none)."""

    def __init__(self, leave_checkpoint: bool = True) -> None:
        self.leave_checkpoint = leave_checkpoint
        self.inits: list[str | None] = []

    def __call__(self, args: list[str], log: Path, heartbeat: Path | None = None) -> Child:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("fake child\n")
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if args[0] == "test":
            write_test_outputs(args)
            return Child(0, 0.01, 50.0)
        run = Path(flags["trainer.default_root_dir"]) / "cfg" / "version_0"
        (run / "checkpoints").mkdir(parents=True)
        summary: dict = {"best_val": {"auroc": 0.7}, "monitor": "val/auroc"}
        if "data.init_args.label_fraction" not in flags:  # the first stage (the sweep sets no fraction on it)
            best = run / "checkpoints" / "best-epoch003.ckpt"
            if self.leave_checkpoint:
                best.write_bytes(b"weights")
                summary["best_checkpoint"] = str(best)
        else:
            self.inits.append(flags.get("model.init_args.backbone.init_args.pretrained_path"))
            (run / "config.yaml").write_text("data: {}\n")
        (run / "summary.json").write_text(json.dumps(summary))
        return Child(0, 0.01, 60.0)


def test_the_runner_starts_each_folds_fine_tune_from_that_folds_best_checkpoint(tmp_path, monkeypatch):
    sweep, out = parse_sweep(_raw(tmp_path, fractions=[1.0]), tmp_path), tmp_path / "out"
    fake = FirstStageChild()
    monkeypatch.setattr(runner_module, "run_child", fake)
    assert Runner(sweep, out, say=lambda s: None).run() == 0
    started = sorted(Path(p).parts[-5] for p in fake.inits if p)
    assert started == ["pretrain-resnet18d-patch-fold0", "pretrain-resnet18d-patch-fold1"]
    first = json.loads(record_path(out, "pretrain-resnet18d-patch-fold1", pretraining=True).read_text())
    assert first["objective"] == "supervised" and first["encoder"].endswith("best-epoch003.ckpt")


def test_a_first_stage_without_a_best_checkpoint_fails_its_arm_not_the_sweep(tmp_path, monkeypatch):
    sweep, out = parse_sweep(_raw(tmp_path, fractions=[1.0], folds=None), tmp_path), tmp_path / "out"
    monkeypatch.setattr(runner_module, "run_child", FirstStageChild(leave_checkpoint=False))
    Runner(sweep, out, say=lambda s: None).run()
    first = json.loads(record_path(out, "pretrain-resnet18d-patch", pretraining=True).read_text())
    assert first["status"] == "failed" and "left no weights" in first["error"]
    assert json.loads(record_path(out, "resnet18d-random-f1-s0").read_text())["status"] == "ok"
    assert json.loads(record_path(out, "resnet18d-patch-f1-s0").read_text())["status"] == "failed"
