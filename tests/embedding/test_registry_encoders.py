"""`medconv embed NAME` for encoders known by name, from an offline Hugging Face cache through timm's own hub loading:
the features are the entry's recipe on the cached weights with the entry's normalisation, the feature file's record
names the entry, the hub commit and the weights' sha256, and a model missing from the cache is a named error."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from medconv.embedding.cli import main
from medconv.embedding.encoders import encoder_from_info
from medconv.errors import InputFileError
from medconv.models.encoder_registry import ENCODERS, SWIGLU, EncoderEntry, resolve_model_args
from medconv.tiling.feature_store import read_features

from ..conftest import write_hf_cache_entry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
FP32 = ["--num-workers", "0", "--dtype", "float32", "--precision", "32-true"]
COMMIT = "0" * 40
MEAN, STD = (0.6, 0.5, 0.4), (0.2, 0.25, 0.3)  # not timm's defaults: the entry's must be the ones used
#: Virchow2's entry (SwiGLU MLP, SiLU, 4 registers, class token + mean of patch tokens) at a tiny size
TINY_VIRCHOW_ARGS = {**ENCODERS["virchow2"].model_args, "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1,
                     "num_heads": 2}


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiles(slide, coords_store, size: int) -> torch.Tensor:
    """The coords store's tiles, read, resized and normalised with the test's own code, not the pipeline's."""
    from medconv.slides.tile_module import InferenceTiles
    from medconv.wsi.tile_dataset import load_slide_tiles

    tiles = InferenceTiles([load_slide_tiles(slide, coords_store, 0, slide_id="s")], None, (size, size))
    return torch.stack([tiles[i]["image"] for i in range(len(tiles))]).float() / 255


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture
def tiny_virchow(hf_home, monkeypatch) -> tuple[EncoderEntry, object]:
    """(entry, snapshot folder): the tiny Virchow2-like ViT written to the offline cache as a hub repo whose config,
    like Virchow2's, leaves out the class-valued arguments the registry supplies."""
    entry = EncoderEntry("tiny-virchow2", "hf-hub:medconv-test/tiny-virchow2", "vit_huge_patch14_224", TINY_VIRCHOW_ARGS,
                         "cls+mean", 64, 32, MEAN, STD, mpp=1.0, tile_size=64)
    monkeypatch.setitem(ENCODERS, entry.name, entry)
    torch.manual_seed(0)
    model = timm.create_model(entry.architecture, num_classes=0, **resolve_model_args(entry.model_args))
    model._model_args = {k: v for k, v in model._model_args.items() if k not in SWIGLU}
    return entry, write_hf_cache_entry(hf_home / "hub", entry.repo_id, model, commit=COMMIT)


def test_registry_vit_with_registers_embeds_from_the_offline_cache(tiny_virchow, emb_slides, tmp_path):
    entry, snapshot = tiny_virchow
    out = tmp_path / "out"
    assert main([entry.name, str(emb_slides / "demo_001.tif"), "--out", str(out), *FP32]) == 0
    bag = read_features(out / "demo_001.h5")
    assert bag.features.shape[1] == 64 and bag.attrs["feature_dim"] == 64 and len(bag.features) > 10
    assert bag.attrs["tile_size"] == 64 and bag.attrs["target_mpp"] == 1.0 and list(bag.attrs["image_size"]) == [32, 32]
    record = bag.encoder
    assert record["kind"] == "registry" and record["name"] == entry.name and record["hub_id"] == entry.hub_id
    assert record["revision"] == COMMIT and record["recipe"] == "cls+mean" and record["mean"] == list(MEAN)
    assert record["weights_sha256"] == _sha256(snapshot / "model.safetensors")

    # the recipe by hand on the cached weights: class token, then the mean of the 16 patch tokens (not the registers)
    model = timm.create_model(entry.architecture, num_classes=0, **resolve_model_args(entry.model_args)).eval()
    model.load_state_dict(load_file(snapshot / "model.safetensors"))
    x = _normalise(_tiles(emb_slides / "demo_001.tif", out / "coords" / "demo_001.h5", 32), MEAN, STD)
    with torch.no_grad():
        tokens = model.forward_features(x)
    assert tokens.shape[1] == 1 + 4 + 16
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1).numpy()
    assert np.allclose(bag.features, expected, atol=1e-4)

    rebuilt = encoder_from_info(record)  # what a MIL model keeps to embed new slides the same way
    with torch.no_grad():
        assert np.allclose(rebuilt.module(x[:4]).numpy(), expected[:4], atol=1e-5)
    state = load_file(snapshot / "model.safetensors")
    save_file({k: v + 1 for k, v in state.items()}, str(snapshot / "model.safetensors"))  # the cache changed since
    with pytest.raises(InputFileError, match="not the ones the features were made with"):
        encoder_from_info(record)


def test_clam_truncated_resnet50_entry(hf_home, emb_slides, tmp_path):
    """The real `resnet50-trunc` entry on a randomly initialised ResNet-50 in the cache under its hub id; tiles are
    resized to 64 px (ResNets take any size) to keep the run short."""
    torch.manual_seed(0)
    snapshot = write_hf_cache_entry(hf_home / "hub", "timm/resnet50.tv_in1k", timm.create_model("resnet50", num_classes=0),
                                    commit=COMMIT)
    out = tmp_path / "out"
    assert main(["resnet50-trunc", str(emb_slides / "demo_002.tif"), "--out", str(out), "--image-size", "64", *FP32]) == 0
    bag = read_features(out / "demo_002.h5")
    assert bag.features.shape[1] == 1024 and bag.attrs["tile_size"] == 256 and bag.attrs["target_mpp"] == 0.5
    assert bag.encoder["name"] == "resnet50-trunc" and bag.encoder["recipe"] == "stage-mean"
    assert bag.encoder["weights_sha256"] == _sha256(snapshot / "model.safetensors")
    model = timm.create_model("resnet50", num_classes=0).eval()
    model.load_state_dict(load_file(snapshot / "model.safetensors"))
    entry = ENCODERS["resnet50-trunc"]
    x = _normalise(_tiles(emb_slides / "demo_002.tif", out / "coords" / "demo_002.h5", 64), entry.mean, entry.std)
    with torch.no_grad():  # CLAM's encoder: stem, layer1-3, global average
        y = model.layer3(model.layer2(model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(x)))))))
    assert np.allclose(bag.features, y.mean(dim=(2, 3)).numpy(), atol=1e-4)


def test_missing_model_offline_names_the_repo_the_cache_and_the_fix(hf_home, emb_slides, tmp_path, capsys):
    assert main(["uni", str(emb_slides / "demo_000.tif"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "encoder uni: hf-hub:MahmoodLab/UNI" in err and str(hf_home / "hub") in err and "HF_HUB_OFFLINE=1" in err
    assert "hf download MahmoodLab/UNI" in err and "huggingface.co/MahmoodLab/UNI" in err  # pre-download, licence page
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_list_encoders_prints_every_entry(capsys):
    assert main(["--list-encoders"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.strip().splitlines()
    assert header.split()[:5] == ["name", "hub", "id", "arch", "recipe"] and len(rows) == len(ENCODERS)
    for row, entry in zip(rows, ENCODERS.values(), strict=True):
        assert row.split()[:2] == [entry.name, entry.hub_id] and f" {entry.feature_dim} " in row
