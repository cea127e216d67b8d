"""The runner without training: a fake child stands in for `medconv fit` / `medconv test` and writes what they write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medconv.ablation import runner as runner_module
from medconv.ablation.cli import main
from medconv.ablation.records import record_path, state
from medconv.ablation.runner import Child, Runner
from medconv.ablation.sweep import parse_sweep

pytestmark = pytest.mark.usefixtures("one_thread")


def _sweep(tmp_path: Path, inits: dict | None = None):
    (tmp_path / "base.yaml").write_text("trainer: {}\n")
    return parse_sweep({"configs": ["base.yaml"], "backbones": [{"name": "cnn_a", "family": "cnn"}, {"name": "vit_b", "family": "vit"}],
                        "inits": inits or {"random": "random"}, "fractions": [0.1, 1.0], "seeds": [0, 1], "split_seed": 0,
                        "steps": 4}, tmp_path)


class FakeChild:
    """Writes a finished run (fit), a test report (test) or an encoder (pretraining) like medconv would."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, args: list[str], log: Path, heartbeat: Path | None = None) -> Child:
        self.calls.append(args)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("fake child\nTraceback: boom\n")
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if args[0] == "test":
            run = Path(args[2]).parent
            (run / "eval" / "test-1").mkdir(parents=True)
            (run / "eval" / "test-1" / "test_metrics.json").write_text(json.dumps({"metrics": {"auroc": 0.5 + float(
                yaml_load(run / "config.yaml")["fraction"]) / 4, "n": 10}}))
            return Child(0, 0.01, 50.0)
        root = Path(flags["trainer.default_root_dir"])
        if root.name in self.fail:
            return Child(1, 0.01, None)
        run = root / "cfg" / f"version_{len(list(root.glob('cfg/version_*')))}"  # a rerun gets a new version
        run.mkdir(parents=True)
        if "data.init_args.source.init_args.split_seed" in flags:  # pretraining
            (run / "encoder.safetensors").write_bytes(b"weights")
            return Child(0, 0.01, 80.0)
        (run / "config.yaml").write_text(f"fraction: {flags['data.init_args.label_fraction']}\n")
        (run / "summary.json").write_text(json.dumps({"best_val": {"auroc": 0.7, "epoch": 2.0}, "monitor": "val/auroc"}))
        (run / "metrics.csv").write_text("epoch,step,val/auroc\n0,9,0.6\n1,19,0.7\n2,29,0.7\n")
        (run / "timing.json").write_text(json.dumps({"train_images_per_s": 100.0, "peak_rss_mb": 90.0, "cuda_peak_mb": None}))
        return Child(0, 0.01, 60.0)


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_runs_then_resumes_and_redoes_only_missing_or_corrupt_records(tmp_path, monkeypatch):
    sweep, out = _sweep(tmp_path), tmp_path / "out"
    fake = FakeChild()
    monkeypatch.setattr(runner_module, "run_child", fake)
    assert Runner(sweep, out, say=lambda s: None).run() == 0
    assert len(fake.calls) == 16  # 8 runs x (fit + test)
    record = json.loads(record_path(out, "cnn_a-random-f0.1-s1").read_text())
    assert record["status"] == "ok" and record["test"]["auroc"] == pytest.approx(0.525) and record["best_step"] == 19
    assert record["fraction"] == 0.1 and record["seed"] == 1 and record["family"] == "cnn" and record["config"] == {"fraction": 0.1}
    assert record["peak_rss_mb"] == 90.0 and record["train_images_per_s"] == 100.0

    record_path(out, "vit_b-random-f1-s0").unlink()
    record_path(out, "cnn_a-random-f1-s0").write_text('{"run_id": "cnn_a-random-f1-s0", "stat')  # interrupted writer
    fake.calls.clear()
    with pytest.warns(UserWarning, match="corrupt"):
        assert Runner(sweep, out, say=lambda s: None).run() == 0
    assert [c[0] for c in fake.calls] == ["fit", "test", "fit", "test"]  # the two runs without a valid record
    assert list((out / "records").glob("cnn_a-random-f1-s0.json.corrupt-*"))  # kept aside, not overwritten
    assert {state(record_path(out, r)) for r in ("vit_b-random-f1-s0", "cnn_a-random-f1-s0")} == {"ok"}


def test_a_failed_run_is_recorded_and_retried(tmp_path, monkeypatch):
    sweep, out = _sweep(tmp_path), tmp_path / "out"
    monkeypatch.setattr(runner_module, "run_child", FakeChild(fail={"vit_b-random-f0.1-s0"}))
    assert Runner(sweep, out, say=lambda s: None).run() == 1
    record = json.loads(record_path(out, "vit_b-random-f0.1-s0").read_text())
    assert record["status"] == "failed" and "boom" in record["error"]
    fake = FakeChild()
    monkeypatch.setattr(runner_module, "run_child", fake)
    assert Runner(sweep, out, say=lambda s: None).run() == 0 and len(fake.calls) == 2


def test_dry_run_lists_without_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner_module, "run_child", FakeChild())
    sweep_file = tmp_path / "sweep.yaml"
    (tmp_path / "base.yaml").write_text("trainer: {}\n")
    sweep_file.write_text("configs: [base.yaml]\nbackbones: [{name: cnn_a, family: cnn}]\ninits: {random: random}\n"
                          "fractions: [0.5, 1.0]\nseeds: [0]\nsplit_seed: 0\nsteps: 4\n")
    out = tmp_path / "out"
    assert main(["--config", str(sweep_file), "--out", str(out), "--shard", "0/1"]) == 0
    record_path(out, "cnn_a-random-f1-s0").unlink()
    runner_module.run_child = None  # a dry run that tried to run anything would fail
    assert main(["--config", str(sweep_file), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out
    assert "done                         cnn_a-random-f0.5-s0" in lines and "to run                       cnn_a-random-f1-s0" in lines
    assert state(record_path(out, "cnn_a-random-f1-s0")) == "missing"


def test_pretraining_runs_first_once_and_feeds_its_encoder(tmp_path, monkeypatch):
    (tmp_path / "pre.yaml").write_text("trainer: {}\n")
    sweep, out = _sweep(tmp_path, {"random": "random", "mim": {"pretrain": ["pre.yaml"]}}), tmp_path / "out"
    fake = FakeChild()
    monkeypatch.setattr(runner_module, "run_child", fake)
    # shard 1/2 holds only fine-tunes of pretraining runs that shard 0/2 owns: it pretrains itself rather than fail
    for index in (1, 0):
        assert Runner(sweep, out, index, 2, say=lambda s: None).run() == 0
    pretraining = [c for c in fake.calls if "--data.init_args.source.init_args.split_seed=0" in c]
    assert len(pretraining) == 2  # once per backbone, whichever shard needed it first
    record = json.loads(record_path(out, "vit_b-mim-f1-s1").read_text())
    assert record["encoder"].endswith("encoder.safetensors") and Path(record["encoder"]).is_file()
    fit = next(c for c in fake.calls if "--trainer.default_root_dir=" + str(out / "runs" / "vit_b-mim-f1-s1") in c)
    assert f"--model.init_args.backbone.init_args.pretrained_path={record['encoder']}" in fit


def test_a_held_lock_is_waited_for(tmp_path, monkeypatch):
    (tmp_path / "pre.yaml").write_text("trainer: {}\n")
    sweep, out = _sweep(tmp_path, {"mim": {"pretrain": ["pre.yaml"]}}), tmp_path / "out"
    monkeypatch.setattr(runner_module, "run_child", FakeChild())
    lock = out / "locks" / "pretrain-cnn_a-mim.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("another shard")
    said = []

    def say(line: str) -> None:  # the other shard finishes while we wait
        said.append(line)
        if "waiting" in line:
            lock.unlink()

    runner = Runner(sweep, out, say=say, wait_s=0.01)
    assert runner.pretrain(runner.by_id["pretrain-cnn_a-mim"])["status"] == "ok"
    assert any("waiting for pretrain-cnn_a-mim" in s for s in said) and not lock.exists()


def test_changed_settings_are_reported_not_silently_mixed(tmp_path, monkeypatch):
    import dataclasses

    sweep, out = _sweep(tmp_path), tmp_path / "out"
    monkeypatch.setattr(runner_module, "run_child", FakeChild())
    Runner(sweep, out, say=lambda s: None).run()
    said = []
    assert Runner(dataclasses.replace(sweep, steps=8), out, say=said.append).run() == 0
    assert any("8 finished runs were made with other settings" in s for s in said)
