"""ENCODER specs: a timm name with a local weights file (or seeded random weights), an SSL export, a medconv run;
each rebuilt from its stored record to the same features."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from medconv.embedding.encoders import encoder_from_info, load_encoder
from medconv.errors import CheckpointError, ConfigError, InputFileError
from medconv.models import TimmBackbone

from .conftest import RUN_MEAN, RUN_STD

pytestmark = pytest.mark.usefixtures("one_thread")


def _same_outputs(a, b, size=(32, 32)) -> bool:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a.module(x), b.module(x), atol=1e-6)


def test_timm_name_with_local_weights(tmp_path):
    torch.manual_seed(3)
    source = TimmBackbone("test_resnet")
    weights = tmp_path / "w.pth"
    torch.save({"state_dict": {f"backbone.model.{k}": v for k, v in source.model.state_dict().items()}}, weights)
    encoder = load_encoder("test_resnet", str(weights))
    assert encoder.dim == 96 and encoder.in_chans == 3 and encoder.tile_size is None and encoder.target_mpp is None
    assert encoder.mean == (0.5, 0.5, 0.5)  # timm's pretrained_cfg for the architecture
    assert all(torch.equal(v, encoder.module.model.state_dict()[k]) for k, v in source.model.state_dict().items())
    info = json.loads(json.dumps(encoder.info))  # JSON-serialisable
    assert info["kind"] == "timm" and info["weights"] == str(weights.resolve()) and len(info["weights_sha256"]) == 64
    assert not encoder.module.training
    assert _same_outputs(encoder, encoder_from_info(info))
    weights.write_bytes(weights.read_bytes() + b"x")  # the weights changed since the features were made
    with pytest.raises(InputFileError, match="sha256"):
        encoder_from_info(info)


def test_random_weights_warn_and_are_the_same_everywhere():
    with pytest.warns(UserWarning, match="random weights.*only a\\s+baseline"):
        a = load_encoder("test_resnet")
    b = encoder_from_info(a.info)
    assert _same_outputs(a, b) and a.fingerprint() == b.fingerprint()


def test_bad_specs_say_what_to_pass(tmp_path, wsi_run):
    with pytest.raises(ConfigError, match="not a timm model name"):
        load_encoder("no_such_net_v9")
    with pytest.raises(ConfigError, match="only for a timm model name"):
        load_encoder(str(wsi_run), weights="w.pth")
    with pytest.raises(InputFileError, match="file not found"):
        load_encoder("test_resnet", str(tmp_path / "missing.pth"))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "encoder.safetensors"))
    with pytest.raises(InputFileError, match="no encoder.json"):
        load_encoder(str(tmp_path / "encoder.safetensors"))
    other = tmp_path / "other.pth"
    torch.save(TimmBackbone("test_convnext").model.state_dict(), other)
    with pytest.raises(ConfigError, match="do not match"):
        load_encoder("test_resnet", str(other))
    with pytest.raises(CheckpointError):
        load_encoder(str(tmp_path / "gone.ckpt"))


def test_ssl_export_folder_or_file(tmp_path):
    from medconv.callbacks.encoder_export import export_encoder

    torch.manual_seed(4)
    backbone = TimmBackbone("test_vit", img_size=(32, 32))
    meta = {"timm_name": "test_vit", "in_chans": 3, "img_size": [32, 32], "model_args": {}, "method": "DINO",
            "data": {"class": "x", "source": {"tile_size": 64, "target_mpp": 1.0, "mean": RUN_MEAN, "std": RUN_STD}}}
    export_encoder(backbone, tmp_path, meta)
    for spec in (tmp_path, tmp_path / "encoder.safetensors"):
        encoder = load_encoder(str(spec))
        assert encoder.info["kind"] == "ssl" and encoder.info["method"] == "DINO"
        assert (encoder.tile_size, encoder.target_mpp, encoder.img_size) == (64, 1.0, (32, 32))
        assert encoder.mean == tuple(RUN_MEAN) and encoder.std == tuple(RUN_STD) and encoder.dim == 64
        assert all(torch.equal(v, encoder.module.model.state_dict()[k]) for k, v in backbone.model.state_dict().items())
    encoder.set_img_size((48, 48))  # a ViT takes another tile size (position embeddings resampled as timm does)
    rebuilt = encoder_from_info(json.loads(json.dumps(encoder.info)))
    assert rebuilt.img_size == (48, 48) and _same_outputs(encoder, rebuilt, (48, 48))


def test_medconv_run_gives_its_backbone_and_training_settings(wsi_run):
    encoder = load_encoder(str(wsi_run))
    state = torch.load(wsi_run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    mine = encoder.module.state_dict()
    assert all(torch.equal(v, mine[k.removeprefix("backbone.")]) for k, v in state.items() if k.startswith("backbone."))
    assert (encoder.tile_size, encoder.target_mpp, encoder.img_size) == (64, 1.0, (48, 48))
    assert encoder.mean == tuple(RUN_MEAN) and encoder.std == tuple(RUN_STD) and encoder.dim == 96
    assert encoder.info["kind"] == "checkpoint" and encoder.info["checkpoint"].endswith("best.ckpt")
    assert _same_outputs(encoder, encoder_from_info(encoder.info))
