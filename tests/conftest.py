"""Shared fixtures: where the real files are (skip when absent), tiny deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def realdata_path() -> Path:
    return Path(os.environ.get("MEDCONV_REALDATA", REPO.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """../shared/realdata (or $MEDCONV_REALDATA); tests using it skip when it is absent."""
    path = realdata_path()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast as two, and far faster when other jobs share a 2-core CPU
    (OpenMP threads spin against them). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- a tiny trained slide model and `medconv infer` on held-out demo slides: shared by tests/inference and
# tests/notebooks (notebooks/slide_heatmaps.ipynb), so one session trains and infers once (~15 s + a few s).


@pytest.fixture(scope="session")
def tiny_wsi_run(tmp_path_factory, repo_root) -> Path:
    """Run directory of `medconv fit` with configs/tests/tiny_wsi.yaml (convnext_atto, 64 px tiles at 1 um/px)."""
    import os

    from medconv.lightning_cli import run_lightning

    root = tmp_path_factory.mktemp("tiny_wsi_fit")
    cwd = os.getcwd()
    os.chdir(root)  # demo slides, coords stores and runs/ land here
    try:
        cli = run_lightning([
            "fit",
            "--config", str(repo_root / "configs" / "wsi_convnext.yaml"),
            "--config", str(repo_root / "configs" / "tests" / "tiny_wsi.yaml"),
        ])
        run = (root / cli.trainer.log_dir).resolve()
    finally:
        os.chdir(cwd)
    assert (run / "config.yaml").is_file()
    return run


@pytest.fixture(scope="session")
def held_out_slides(tmp_path_factory) -> Path:
    """3 demo slides the model never saw (another seed; demo_001 has tumour), with masks and manifest.csv."""
    from medconv.demo.wsi import generate_demo_slides

    out = tmp_path_factory.mktemp("held_out_wsi")
    generate_demo_slides(out, n_slides=3, seed=11, width=1536, height=1024)
    return out


@pytest.fixture(scope="session")
def inferred(tiny_wsi_run, held_out_slides, tmp_path_factory) -> tuple[int, Path]:
    """(exit code, output folder) of `medconv infer` on the held-out slides, 2 loader workers, topk:3, evaluated
    against the demo tumour masks (quality.json)."""
    from medconv.inference.cli import main

    out = tmp_path_factory.mktemp("infer_out")
    code = main([str(tiny_wsi_run), str(held_out_slides / "slides"), "--out", str(out), "--num-workers", "2",
                 "--batch-size", "16", "--aggregate", "topk:3", "--masks", str(held_out_slides / "manifest.csv")])
    return code, out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


# --- an offline Hugging Face cache in the hub layout, so hub loading (`timm.create_model(..., pretrained=True)`,
# `hf-hub:` names, tags whose weights live on the hub) is tested through timm's real code path with no network.


def write_hf_cache_entry(hub_cache: Path, repo_id: str, model, model_args: dict | None = None,
                         pretrained_cfg: dict | None = None, commit: str = "0" * 40) -> Path:
    """Write `model` as the hub repo `repo_id` into `hub_cache` (the folder HF_HUB_CACHE / HF_HOME/hub names):
    models--org--name/refs/main holds the commit, snapshots/<commit>/ holds config.json + model.safetensors as
    `timm.models.save_for_hf` writes them. Returns the snapshot folder."""
    import json

    import timm.models

    org, name = repo_id.split("/", 1)
    repo = Path(hub_cache) / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    timm.models.save_for_hf(model, str(snapshot), model_args=model_args, safe_serialization=True)
    if pretrained_cfg:
        config = json.loads((snapshot / "config.json").read_text())
        config.setdefault("pretrained_cfg", {}).update(pretrained_cfg)
        (snapshot / "config.json").write_text(json.dumps(config, indent=2))
    return snapshot


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty HF_HOME in offline mode; fill it with `write_hf_cache_entry(hf_home / "hub", ...)`."""
    home = tmp_path / "hf_home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(home / "hub"), raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HOME", str(home), raising=False)
    return home
