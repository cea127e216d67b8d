"""Every YAML in configs/ parses: experiments alone, overrides on top of their experiment, pieces through one;
sweep files (`medconv ablate`) through the sweep parser, plus the LightningCLI config of their first runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medconv.ablation.commands import fit_args, pretrain_args
from medconv.ablation.sweep import expand, load_sweep, pretrain_runs
from medconv.lightning_cli import run_lightning

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Override files and the experiment (plus overrides) each one applies to.
OVERRIDES = {
    "quickstart_cpu.yaml": "mammo_convnext.yaml",
    "tests/tiny_mammo.yaml": ["mammo_convnext.yaml", "quickstart_cpu.yaml"],
    "tests/tiny_wsi.yaml": "wsi_convnext.yaml",
    "tests/tiny_mammo_patches.yaml": "mammo_patches_convnext.yaml",
    "pretrain/on_wsi.yaml": "pretrain/mim_convnext.yaml",
    "pretrain/on_folder.yaml": "pretrain/dino_swin.yaml",
    "tests/tiny_pretrain.yaml": "pretrain/mim_convnext.yaml",
    "ablation/ssl_mammo_pretrain.yaml": "pretrain/mim_convnext.yaml",
    "ablation/ssl_mammo_finetune.yaml": ["mammo_convnext.yaml", "quickstart_cpu.yaml"],
    "ablation/ssl_wsi_pretrain.yaml": ["pretrain/mim_convnext.yaml", "pretrain/on_wsi.yaml"],
    "ablation/ssl_wsi_finetune.yaml": "wsi_convnext.yaml",
    "ablation/mias_finetune.yaml": ["mammo_convnext.yaml", "quickstart_cpu.yaml"],
    "ablation/mias_patches.yaml": "mammo_patches_convnext.yaml",
    "mil/clam_sb.yaml": "wsi_abmil.yaml",
    "mil/transmil.yaml": "wsi_abmil.yaml",
    "mil/end_to_end.yaml": "wsi_abmil.yaml",
    "tests/tiny_mil.yaml": "wsi_abmil.yaml",
}
PIECE_DIRS = ("base", "backbones")


def _all_yaml() -> list[str]:
    return sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))


def _is_experiment(rel: str) -> bool:
    content = yaml.safe_load((CONFIGS / rel).read_text()) or {}
    if not (isinstance(content, dict) and {"trainer", "data", "model"} <= set(content)):
        return False
    model = content["model"]
    return isinstance(model, str) or (isinstance(model, dict) and "class_path" in model)


def _is_sweep(rel: str) -> bool:
    """A `medconv ablate` sweep file (configs/ablation/<name>.yaml): not a LightningCLI config."""
    content = yaml.safe_load((CONFIGS / rel).read_text()) or {}
    return isinstance(content, dict) and "backbones" in content and "fractions" in content


def _print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        run_lightning(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("rel", _all_yaml())
def test_config_parses(rel: str, capsys: pytest.CaptureFixture[str]) -> None:
    if rel.split("/")[0] in PIECE_DIRS:
        if rel.startswith("backbones/"):
            config = _print_config(["--config", str(CONFIGS / "mammo_convnext.yaml"), "--model.init_args.backbone", str(CONFIGS / rel)], capsys)
            assert config["model"]["init_args"]["backbone"]["class_path"]
        else:
            referenced = any(Path(rel).name in (CONFIGS / e).read_text() for e in _all_yaml() if _is_experiment(e))
            assert referenced, f"configs/{rel} is referenced by no experiment config, so nothing parses it"
        return
    if _is_sweep(rel):
        sweep = load_sweep(CONFIGS / rel)
        first = {}
        for run in expand(sweep):  # the first fine-tune of each backbone: its configs, overrides and axes compose
            first.setdefault(run.backbone.name, run)
        for run in first.values():
            args = fit_args(sweep, run, Path("runs") / run.run_id, Path("encoder.safetensors"))
            config = _print_config(args[1:], capsys)
            assert config["data"]["init_args"]["label_fraction"] == run.fraction
        for prun in pretrain_runs(sweep)[:1]:
            config = _print_config(pretrain_args(sweep, prun, Path("runs") / prun.run_id)[1:], capsys)
            data = config["data"]["init_args"]  # a supervised first stage is a labelled datamodule, SSL wraps a source
            data = data if prun.init.objective == "supervised" else data["source"]["init_args"]
            assert data["split_seed"] == sweep.split_seed
        return
    if _is_experiment(rel):
        config = _print_config(["--config", str(CONFIGS / rel)], capsys)
    else:
        assert rel in OVERRIDES, f"configs/{rel} is neither an experiment nor a known override: add it to OVERRIDES"
        bases = OVERRIDES[rel] if isinstance(OVERRIDES[rel], list) else [OVERRIDES[rel]]
        stack = [arg for base in bases for arg in ("--config", str(CONFIGS / base))]
        config = _print_config([*stack, "--config", str(CONFIGS / rel)], capsys)
    assert config["model"]["class_path"] and config["data"]["class_path"]


@pytest.mark.parametrize("aggregator", ["mil/clam_sb.yaml", "mil/transmil.yaml"])
def test_tiny_mil_goes_on_top_of_every_aggregator(aggregator: str, capsys: pytest.CaptureFixture[str]) -> None:
    stack = [arg for rel in ("wsi_abmil.yaml", aggregator, "tests/tiny_mil.yaml") for arg in ("--config", str(CONFIGS / rel))]
    config = _print_config(stack, capsys)
    chosen = config["model"]["init_args"]["aggregator"]
    assert chosen["class_path"].endswith(("CLAMSB", "TransMIL")) and chosen["init_args"]["hidden_dim"] == 32
