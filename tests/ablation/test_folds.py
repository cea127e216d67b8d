"""`folds: k` in a sweep: every run (pretraining included) repeated per test fold, fold-aware commands, and records
that carry the fold and point at the run's per-image test predictions (what out-of-fold pooling reads)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medconv.ablation import runner as runner_module
from medconv.ablation.cli import main
from medconv.ablation.commands import fit_args, pretrain_args
from medconv.ablation.records import record_path
from medconv.ablation.runner import Child, Runner
from medconv.ablation.sweep import expand, parse_sweep, pretrain_runs
from medconv.data.datamodule import ClassificationDataModule
from medconv.errors import ConfigError

from .conftest import raw_sweep, write_test_outputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _raw(tmp_path: Path, **changes) -> dict:
    return raw_sweep(tmp_path, **{"folds": 3, **changes})


def test_every_run_and_pretraining_is_repeated_per_fold(tmp_path):
    sweep = parse_sweep(_raw(tmp_path), tmp_path)
    runs = expand(sweep)
    assert len(runs) == 2 * 2 * 2 * 2 * 3 and len({r.run_id for r in runs}) == len(runs)
    assert {r.fold for r in runs} == {0, 1, 2}
    assert "convnext_atto-random-f0.05-s1-fold2" in {r.run_id for r in runs}
    for run in runs:
        assert run.run_id.endswith(f"-fold{run.fold}")
        if run.init.kind == "pretrain":  # a fine-tune starts from the pretraining of its own fold
            assert run.pretrain_id == f"pretrain-{run.backbone.name}-mim-fold{run.fold}"
    pre = pretrain_runs(sweep)
    assert [(p.run_id, p.fold) for p in pre[:3]] == [(f"pretrain-convnext_atto-mim-fold{k}", k) for k in range(3)]
    assert len(pre) == 2 * 3
    plain = expand(parse_sweep({k: v for k, v in _raw(tmp_path).items() if k != "folds"}, tmp_path))
    assert len(plain) == 16 and all(r.fold is None and "fold" not in r.run_id for r in plain)  # ids as before


def test_fold_commands_set_the_fold_for_fit_and_pretraining(tmp_path):
    sweep = parse_sweep(_raw(tmp_path, overrides={"data.init_args.image_size": [64, 64]}), tmp_path)
    run = next(r for r in expand(sweep) if r.run_id == "pvt_v2_b0-mim-f0.05-s1-fold2")
    args = fit_args(sweep, run, tmp_path / "root", tmp_path / "enc.safetensors")
    for flag in ("--data.init_args.n_folds=3", "--data.init_args.fold=2", "--data.init_args.test_fraction=0.0",
                 "--data.init_args.split_seed=3", "--data.init_args.label_fraction=0.05"):
        assert flag in args
    prun = next(p for p in pretrain_runs(sweep) if p.run_id == run.pretrain_id)
    pre = pretrain_args(sweep, prun, tmp_path / "pre")
    source = "--data.init_args.source.init_args"
    for flag in (f"{source}.n_folds=3", f"{source}.fold=2", f"{source}.test_fraction=0.0", f"{source}.split_seed=3"):
        assert flag in pre
    clash = parse_sweep(_raw(tmp_path, overrides={"data.init_args.fold": 1}), tmp_path)
    with pytest.raises(ConfigError, match="set by the sweep"):
        fit_args(clash, expand(clash)[0], tmp_path)
    test_fraction = parse_sweep(_raw(tmp_path, overrides={"data.init_args.test_fraction": 0.25}), tmp_path)
    with pytest.raises(ConfigError, match="test set is its fold"):
        fit_args(test_fraction, expand(test_fraction)[0], tmp_path)


@pytest.mark.parametrize("value", [1, "3", True, 2.5])
def test_bad_folds_are_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="folds: expected an integer >= 2"):
        parse_sweep(_raw(tmp_path, folds=value), tmp_path)


class _Table(ClassificationDataModule):
    def load_table(self) -> pd.DataFrame:
        return pd.DataFrame({"patient_id": [f"p{i:02d}" for i in range(24)], "label": ["a", "b", "b"] * 8})

    def make_dataset(self, table: pd.DataFrame, stage: str) -> pd.DataFrame:
        return table


def test_pretraining_sees_only_the_training_folds():
    from medconv.ssl.data import PretrainDataModule

    seen: set[str] = set()
    for fold in range(3):
        source = _Table(n_folds=3, fold=fold, split_seed=3, num_workers=0)
        PretrainDataModule(source, views="image").setup("fit")
        test = set(source.splits["test"]["patient_id"])
        pretrained_on = set(source.splits["train"]["patient_id"])
        assert len(test) == 8 and pretrained_on and not pretrained_on & test
        seen |= test
    assert len(seen) == 24


class FoldChild:
    """Stands in for `medconv fit` / `medconv test` (and pretraining): writes what they write, notes the folds asked."""

    def __init__(self) -> None:
        self.folds: list[tuple[str, str]] = []

    def __call__(self, args: list[str], log: Path, heartbeat: Path | None = None) -> Child:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("fake child\n")
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if args[0] == "test":
            write_test_outputs(args, "label_index,image_id,patient_id,prob_0,prob_1,pred,label\n1,a.png,p1,0.2,0.8,b,b\n")
            return Child(0, 0.01, 50.0)
        root = Path(flags["trainer.default_root_dir"])
        run = root / "cfg" / "version_0"
        run.mkdir(parents=True)
        if "data.init_args.source.init_args.fold" in flags:  # pretraining
            self.folds.append(("pretrain", flags["data.init_args.source.init_args.fold"]))
            (run / "encoder.safetensors").write_bytes(b"weights")
            return Child(0, 0.01, 80.0)
        encoder = flags.get("model.init_args.backbone.init_args.pretrained_path")  # <out>/pretrain/<id>/cfg/version_0/...
        self.folds.append((Path(encoder).parts[-4] if encoder else "random", flags["data.init_args.fold"]))
        (run / "config.yaml").write_text("data: {}\n")
        (run / "summary.json").write_text(json.dumps({"best_val": {"auroc": 0.7}, "monitor": "val/auroc"}))
        return Child(0, 0.01, 60.0)


def test_runner_records_the_fold_and_the_test_predictions(tmp_path, monkeypatch, capsys):
    raw = _raw(tmp_path, backbones=[{"name": "convnext_atto", "family": "cnn"}], fractions=[1.0], seeds=[0], folds=2)
    sweep, out = parse_sweep(raw, tmp_path), tmp_path / "out"
    fake = FoldChild()
    monkeypatch.setattr(runner_module, "run_child", fake)
    assert Runner(sweep, out, say=lambda s: None).run() == 0
    assert sorted(fake.folds) == [("pretrain", "0"), ("pretrain", "1"), ("pretrain-convnext_atto-mim-fold0", "0"),
                                  ("pretrain-convnext_atto-mim-fold1", "1"), ("random", "0"), ("random", "1")]
    for fold in (0, 1):
        record = json.loads(record_path(out, f"convnext_atto-mim-f1-s0-fold{fold}").read_text())
        assert record["status"] == "ok" and record["fold"] == fold and record["n_folds"] == 2
        assert record["pretrain_id"] == f"pretrain-convnext_atto-mim-fold{fold}"
        predictions = pd.read_csv(record["test_predictions"])
        assert {"image_id", "patient_id", "label_index", "prob_1"} <= set(predictions.columns)
        assert json.loads(record_path(out, record["pretrain_id"], pretraining=True).read_text())["fold"] == fold

    (tmp_path / "s.yaml").write_text(json.dumps(raw))  # YAML is a superset of JSON
    capsys.readouterr()
    assert main(["--config", str(tmp_path / "s.yaml"), "--out", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "4 fine-tunes + 2 pretraining runs" in listed and "done                         convnext_atto-random-f1-s0-fold1" in listed
    assert "--data.init_args.fold=0" in listed


def test_fold_flags_parse_into_the_shipped_configs(capsys):
    """The fold flags reach a modality datamodule (passed on through **kwargs) and a pretraining run's source."""
    import yaml

    from medconv.lightning_cli import run_lightning

    configs = Path(__file__).resolve().parents[2] / "configs"
    raw = yaml.safe_load((configs / "ablation" / "mammo_gpu.yaml").read_text())
    raw["overrides"].pop("data.init_args.test_fraction")
    raw["pretrain_overrides"].pop("data.init_args.source.init_args.test_fraction")
    sweep = parse_sweep({**raw, "folds": 4}, configs / "ablation")
    run = next(r for r in expand(sweep) if r.run_id == "convnext_tiny-mim-f1-s0-fold3")
    prun = next(p for p in pretrain_runs(sweep) if p.run_id == run.pretrain_id)
    for args, where in ((fit_args(sweep, run, Path("runs"), Path("enc.safetensors")), ("data",)),
                        (pretrain_args(sweep, prun, Path("runs")), ("data", "source"))):
        with pytest.raises(SystemExit) as exit_info:
            run_lightning([*args, "--print_config"])
        assert exit_info.value.code in (0, None)
        data = yaml.safe_load(capsys.readouterr().out)
        for key in where:
            data = data[key]["init_args"]
        assert (data["n_folds"], data["fold"], data["test_fraction"], data["split_seed"]) == (4, 3, 0.0, 0)
