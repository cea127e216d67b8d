"""`medconv export RUN --out DIR` of classifiers: plain timm rebuilds the run, head included, from the folder alone
(`local-dir:`), with the run's classes and input recipe; the card quotes the run's test report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_data_config

from medconv.cli import main
from medconv.runs import load_run

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def export(run: Path, out: Path, *extra: str) -> Path:
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(run), "--out", str(out), *extra])
    assert exit_.value.code == 0
    return out


def same_logits(run: Path, out: Path) -> tuple[torch.nn.Module, object]:
    """The export through plain timm and the loaded run give the same logits on the same batch."""
    loaded = load_run(run)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(3, loaded.in_chans, *loaded.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = loaded.module(x), model(x)
    assert got.shape == (3, len(loaded.classes))
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    return model, loaded


def test_gresnet_mammogram_classifier_loads_in_plain_timm_with_its_head(gresnet_run, tmp_path):
    out = export(gresnet_run, tmp_path / "gresnet_mammo")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model, run = same_logits(gresnet_run, out)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "gresnet_tiny" and config["num_classes"] == 2 and config["num_features"] == 128
    assert config["label_names"] == run.classes == ["negative", "positive"]
    assert config["model_args"]["in_chans"] == 1 and config["model_args"]["global_pool"] == "avgmax"
    assert config["medconv"]["modality"] == "mammo" and config["medconv"]["preprocessing"] == run.preprocessing
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == run.classes
    assert tuple(cfg["input_size"]) == (1, 128, 64) and list(cfg["mean"]) == [0.5] and list(cfg["std"]) == [0.5]
    assert cfg["crop_pct"] == 1.0 and "hf_hub_id" not in config["pretrained_cfg"]


def test_timm_data_config_is_the_runs_recipe(gresnet_run, tmp_path):
    out = export(gresnet_run, tmp_path / "exported")
    run = load_run(gresnet_run)
    data = resolve_data_config({}, model=timm.create_model(f"local-dir:{out}", pretrained=True))
    assert data["input_size"] == (run.in_chans, *run.image_size) == (1, 128, 64)
    assert tuple(data["mean"]) == run.mean and tuple(data["std"]) == run.std and data["crop_pct"] == 1.0


def test_card_quotes_the_test_report_with_its_intervals(gresnet_run, tmp_path):
    out = export(gresnet_run, tmp_path / "carded", "--license", "cc-by-4.0", "--hub-id", "lab/gresnet-mammo")
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: timm" in front and "license: cc-by-4.0" in front
    assert all(f"- {tag}" in front for tag in ("image-classification", "timm", "medconv", "mammography"))
    report = json.loads(next(gresnet_run.glob("eval/test-*/test_metrics.json")).read_text())["metrics"]
    for key in ("auroc", "breast/auroc"):
        shown = f"{report[key]:.3f} ({report[key + '_ci_low']:.3f}–{report[key + '_ci_high']:.3f})"
        assert shown in card, shown
    assert "held-out test split" in card and "no test metrics" not in card
    assert 'timm.create_model("hf-hub:lab/gresnet-mammo", pretrained=True)' in card
    assert "import medconv.models" in card and "synthetic demo" in card and "not a medical device" in card
    assert str(gresnet_run) not in card  # a card is published: file names only, no local paths


def test_a_medconv_architecture_needs_import_medconv_models_as_the_card_says(gresnet_run, tmp_path):
    out = export(gresnet_run, tmp_path / "custom")
    code = (f"import timm, torch\ntry:\n    timm.create_model('local-dir:{out}', pretrained=True)\n"
            "except RuntimeError as err:\n    print('without:', err)\n"
            f"import medconv.models\nm = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
            "print('with:', tuple(m(torch.zeros(1, 1, 128, 64)).shape))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "without: Unknown model (gresnet_tiny)" in done.stdout and "with: (1, 2)" in done.stdout


def test_slide_classifier_exports_and_its_card_says_it_has_no_test_metrics(tiny_wsi_run, tmp_path):
    out = export(tiny_wsi_run, tmp_path / "wsi")
    model, run = same_logits(tiny_wsi_run, out)
    assert model.pretrained_cfg["architecture"] == "convnext_atto" and model.pretrained_cfg["label_names"] == ["normal", "tumor"]
    assert list(model.pretrained_cfg["mean"]) == list(run.mean) and tuple(model.pretrained_cfg["input_size"]) == (3, 64, 64)
    card = (out / "README.md").read_text()
    assert "- pathology" in card and "This card has no test metrics" in card
    assert "import medconv.models" not in card  # a timm architecture needs nothing but timm
    assert "target_mpp: 1.0" in card and "tile_size: 64" in card


def test_with_checkpoint_the_folder_serves_medconv_too(gresnet_run, tmp_path):
    out = export(gresnet_run, tmp_path / "with_ckpt", "--with-checkpoint")
    slim, run = load_run(out / "medconv.ckpt"), load_run(gresnet_run)
    assert (slim.task, slim.modality, slim.classes, slim.mean) == (run.task, run.modality, run.classes, run.mean)
    state = torch.load(out / "medconv.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" not in state
    x = torch.randn(2, 1, 128, 64)
    with torch.no_grad():
        assert torch.equal(slim.module(x), run.module(x))
    assert "`medconv infer medconv.ckpt" in (out / "README.md").read_text()


def test_the_folder_uploaded_as_a_hub_repo_loads_with_hf_hub(gresnet_run, tmp_path, hf_home):
    """What `hf upload lab/gresnet-mammo DIR` publishes, as the Hugging Face cache holds it after a download
    (offline: refs/main -> snapshots/<commit>/ with the folder's files)."""
    out = export(gresnet_run, tmp_path / "gresnet-mammo")
    repo, commit = hf_home / "hub" / "models--lab--gresnet-mammo", "0" * 40
    shutil.copytree(out, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    from_hub = timm.create_model("hf-hub:lab/gresnet-mammo", pretrained=True).eval()
    assert from_hub.pretrained_cfg["label_names"] == ["negative", "positive"]
    x = torch.randn(2, 1, 128, 64)
    with torch.no_grad():
        assert torch.equal(from_hub(x), load_run(gresnet_run).module(x))
