"""What `medconv export` refuses, and that a refused or failed export leaves nothing that looks like an export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from medconv.cli import main
from medconv.errors import ConfigError
from medconv.export import export_run
from medconv.export.model import exported_module
from medconv.models import TimmBackbone
from medconv.runs import Run
from medconv.tasks import ClassificationModule

pytestmark = pytest.mark.usefixtures("one_thread")


def medconv_export(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(["export", *argv])
    return int(exit_.value.code)


def test_a_bad_run_path_is_one_line_naming_it(tmp_path, capsys):
    assert medconv_export(str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medconv export: error: ") and "nope.ckpt: checkpoint not found" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_bad_hub_id_is_refused(tmp_path, capsys):
    assert medconv_export(str(tmp_path), "--out", str(tmp_path / "out"), "--hub-id", "no-org") == 2
    assert "ORG/NAME" in capsys.readouterr().err


@pytest.mark.integration
def test_a_non_empty_out_is_kept_unless_force(gresnet_run, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert medconv_export(str(gresnet_run), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "not empty (notes.txt)" in err and "--force" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # --force: the export's files are written, the user's other files (a hub clone's .git, ...) stay
    assert medconv_export(str(gresnet_run), "--out", str(out), "--force", "--with-checkpoint") == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "medconv.ckpt", "model.safetensors", "notes.txt"]
    assert medconv_export(str(gresnet_run), "--out", str(out), "--force") == 0  # an export without medconv.ckpt
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine" and not list(tmp_path.glob(".repo.*"))


@pytest.mark.integration
def test_a_failed_export_leaves_no_folder(gresnet_run, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("medconv.export.run.model_card", broken)  # fails after the weights were written
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(gresnet_run, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temp folder


def run_of(module: nn.Module, task: str = "classify") -> Run:
    return Run(module.eval(), task, "mammo", ["a", "b"], Path("model.ckpt"), {}, image_size=(64, 64), in_chans=1)


def test_a_head_that_is_not_linear_is_refused_by_name():
    module = ClassificationModule(TimmBackbone("gresnet_tiny", in_chans=1), num_classes=2)
    module.head = nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(ConfigError, match=r"model.ckpt: the run's head \(Linear -> ReLU -> Linear\) is not a linear layer on the pooled features"):
        exported_module(run_of(module), {})


def test_a_linear_head_is_exported_exactly():
    module = ClassificationModule(TimmBackbone("gresnet_tiny", in_chans=1), num_classes=3, head_dropout=0.3)
    exported = exported_module(run_of(module), {})
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(exported(x), module(x))


def test_mil_runs_are_refused():
    with pytest.raises(ConfigError, match="a mil run is not an image model timm can load"):
        exported_module(run_of(nn.Identity(), task="mil"), {})


@pytest.mark.integration
def test_the_config_is_timms_format_with_medconvs_recipe_beside_it(gresnet_run, tmp_path):
    config = json.loads((export_run(gresnet_run, tmp_path / "out").out / "config.json").read_text())
    assert set(config) >= {"architecture", "num_classes", "num_features", "label_names", "model_args", "pretrained_cfg", "medconv"}
    assert config["pretrained_cfg"]["license"] == "other" and config["pretrained_cfg"]["interpolation"] == "bilinear"
    assert config["pretrained_cfg"]["pool_size"] is None  # gresnet_tiny's (2, 2) is for 64x64, not the run's 128x64
    assert config["medconv"]["checkpoint"]["file"].startswith("best-") and len(config["medconv"]["checkpoint"]["sha256"]) == 64
