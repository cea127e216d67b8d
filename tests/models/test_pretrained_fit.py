"""`medconv fit` with hub weights, end to end from an offline Hugging Face cache: the run starts from the cached
tensors, its checkpoint says which weights those were, and neither reloading nor evaluating it fetches them again;
data that leaves mean/std unset is normalised as the weights were."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from medconv.lightning_cli import MedconvCLI, run_lightning
from medconv.runs import load_run
from medconv.tasks import ClassificationModule

from ..conftest import write_hf_cache_entry

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BACKBONE = "--model.init_args.backbone.init_args"
pytestmark = pytest.mark.integration


def _no_downloads(monkeypatch, empty: Path) -> None:
    """An empty cache, and any hub fetch an error: what a rebuild must not need."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"fetched from the hub: {args} {kwargs}")

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(empty))
    monkeypatch.setattr("timm.models._hub.hf_hub_download", refuse)


def test_fit_starts_from_the_cached_weights_and_its_checkpoint_never_fetches_them(hf_home, tmp_path, monkeypatch):
    torch.manual_seed(0)
    source = timm.create_model("resnet18d")
    snapshot = write_hf_cache_entry(hf_home / "hub", "timm/resnet18d.ra2_in1k", source)
    started: list[dict[str, torch.Tensor]] = []
    monkeypatch.setattr(ClassificationModule, "on_fit_start",
                        lambda self: started.append({k: v.clone() for k, v in self.backbone.model.state_dict().items()}),
                        raising=False)
    stack = [a for c in ("mammo_convnext.yaml", "quickstart_cpu.yaml", "tests/tiny_mammo.yaml") for a in ("--config", str(CONFIGS / c))]
    run_lightning(["fit", *stack, "--trainer.default_root_dir", str(tmp_path / "runs"),
                   "--data.init_args.demo.init_args.root", str(tmp_path / "demo"), "--data.init_args.cache_dir", str(tmp_path / "cache"),
                   "--data.init_args.demo.init_args.n_patients", "8", "--data.init_args.demo.init_args.image_size", "[128, 100]",
                   "--data.init_args.image_size", "[64, 32]", "--trainer.max_steps", "1", "--trainer.max_epochs", "1",
                   f"{BACKBONE}.name", "resnet18d.ra2_in1k", f"{BACKBONE}.pretrained", "true"])

    (initial,) = started
    theirs = source.state_dict()
    assert set(initial) <= set(theirs)
    for key, value in initial.items():  # the cached tensors, the grey input conv summed over RGB
        expected = theirs[key].sum(dim=1, keepdim=True) if key == "conv1.0.weight" else theirs[key]
        assert torch.equal(value, expected), key

    (run,) = (tmp_path / "runs" / "tiny_mammo").glob("version_*")
    ckpt = run / "checkpoints" / "last.ckpt"
    backbone = torch.load(ckpt, map_location="cpu", weights_only=True)["medconv"]["model"]["init_args"]["backbone"]
    assert "pretrained" not in backbone["init_args"]
    weights = backbone["weights"]
    assert (weights["id"], weights["commit"]) == ("timm/resnet18d.ra2_in1k", "0" * 40)
    assert weights["file"] == str(snapshot / "model.safetensors")

    _no_downloads(monkeypatch, tmp_path / "empty_cache")
    loaded = load_run(ckpt)  # the record alone: no hub
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(loaded.module.backbone.model.conv1[0].weight, trained["backbone.model.conv1.0.weight"])
    run_lightning(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", "last"])  # the saved config says pretrained


def _wsi_cli(*extra: str) -> MedconvCLI:
    stack = [a for c in ("wsi_convnext.yaml", "tests/tiny_wsi.yaml") for a in ("--config", str(CONFIGS / c))]
    return MedconvCLI(args=[*stack, f"{BACKBONE}.name", "hf-hub:someone/tiny-convnext", f"{BACKBONE}.pretrained", "true",
                            *extra], run=False, subclass_mode_model=True, subclass_mode_data=True)


def test_data_without_mean_std_is_normalised_as_the_pretrained_weights_were(hf_home):
    dims = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
    write_hf_cache_entry(hf_home / "hub", "someone/tiny-convnext", timm.create_model("convnext_atto", **dims), model_args=dims,
                         pretrained_cfg={"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]})
    cli = _wsi_cli()
    assert cli.datamodule.mean == (0.1, 0.2, 0.3) and cli.datamodule.std == (0.4, 0.5, 0.6)
    assert cli.config.data.init_args.mean == [0.1, 0.2, 0.3]  # so config.yaml and the run record say so
    assert cli.datamodule.preprocessing()["mean"] == [0.1, 0.2, 0.3]
    given = _wsi_cli("--data.init_args.mean", "[0.5, 0.5, 0.5]", "--data.init_args.std", "[0.25, 0.25, 0.25]")
    assert given.datamodule.mean == (0.5, 0.5, 0.5) and given.datamodule.std == (0.25, 0.25, 0.25)


def test_medconv_fit_without_the_weights_is_one_error_line_not_a_traceback(hf_home, tmp_path, capsys):
    from medconv.cli import main

    stack = [a for c in ("mammo_convnext.yaml", "quickstart_cpu.yaml") for a in ("--config", str(CONFIGS / c))]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *stack, "--trainer.default_root_dir", str(tmp_path), f"{BACKBONE}.name", "resnet18d.ra2_in1k",
              f"{BACKBONE}.pretrained", "true"])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medconv: error:")]
    assert "timm/resnet18d.ra2_in1k" in line and str(hf_home / "hub") in line and "hf download" in line
