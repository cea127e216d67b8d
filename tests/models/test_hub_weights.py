"""Pretrained weights through timm's hub loading (tags, hf-hub:, local-dir:) from an offline Hugging Face cache:
the tensors in the cache are what the backbone starts from, adapted by the same rule as a local file, and a model
that cannot be had is one named error that says what to do."""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch

from medconv.errors import ConfigError, PretrainedWeightsError
from medconv.models import TimmBackbone, hub

from ..conftest import write_hf_cache_entry

TAG = "test_resnet.r160_in1k"  # a timm registry tag whose weights live on the hub as timm/test_resnet.r160_in1k
TINY_CONVNEXT = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}


def _seeded(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def test_a_tag_starts_from_the_cached_tensors_adapted_as_a_local_file_and_as_timm_would(hf_home, tmp_path):
    source = _seeded("test_resnet")
    snapshot = write_hf_cache_entry(hf_home / "hub", f"timm/{TAG}", source)
    torch.save(source.state_dict(), tmp_path / "same.pth")

    backbone = TimmBackbone(TAG, in_chans=1, img_size=(64, 64), pretrained=True)
    theirs = source.state_dict()
    for key, value in backbone.model.state_dict().items():
        expected = theirs[key].sum(dim=1, keepdim=True) if key == "conv1.0.weight" else theirs[key]  # grey = RGB summed
        assert torch.equal(value, expected), key
    report = backbone.weight_report
    assert report.ok and len(report.loaded) == len(backbone.model.state_dict())
    assert report.adapted == ["conv1.0.weight: (16, 3, 3, 3) -> (16, 1, 3, 3) summed over RGB"]

    local = TimmBackbone("test_resnet", in_chans=1, img_size=(64, 64), pretrained_path=str(tmp_path / "same.pth"))
    timm_own = timm.create_model(TAG, pretrained=True, in_chans=1, num_classes=0)  # timm adapting in_chans itself
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, local.model.state_dict()[key]) and torch.equal(value, timm_own.state_dict()[key]), key

    weights = backbone.weights
    file = snapshot / "model.safetensors"
    assert weights["source"] == "hf-hub" and weights["id"] == f"timm/{TAG}" and weights["commit"] == "0" * 40
    assert weights["file"] == str(file) and weights["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert backbone.pretrained_mean_std == ((0.5,), (0.5,))  # test_resnet's pretrained_cfg, for one channel
    assert backbone.spec()["weights"] == weights


def test_hf_hub_and_local_dir_names_load_and_rebuild_without_the_hub(hf_home, monkeypatch, tmp_path):
    source = _seeded("convnext_atto", num_classes=0, **TINY_CONVNEXT)
    snapshot = write_hf_cache_entry(hf_home / "hub", "someone/tiny-convnext", source, model_args=TINY_CONVNEXT,
                                    pretrained_cfg={"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]})
    from_hub = TimmBackbone("hf-hub:someone/tiny-convnext", img_size=(32, 32), pretrained=True)
    from_dir = TimmBackbone(f"local-dir:{snapshot}", img_size=(32, 32), pretrained=True)
    for backbone in (from_hub, from_dir):
        assert backbone.weight_report.ok
        for key, value in backbone.model.state_dict().items():
            assert torch.equal(value, source.state_dict()[key]), key
    assert from_hub.pretrained_mean_std == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert from_dir.weights["source"] == "local-dir" and from_dir.weights["file"] == str(snapshot / "model.safetensors")

    spec = from_hub.spec()  # the architecture and the arguments config.json gave: rebuilding reads no hub
    assert spec["init_args"]["name"] == "convnext_atto" and spec["init_args"]["model_args"]["dims"] == [8, 16, 24, 32]
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    rebuilt = TimmBackbone(**spec["init_args"])
    rebuilt.load_state_dict(from_hub.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), from_hub.eval()(x))


def test_weights_not_in_the_offline_cache_name_the_hub_id_the_cache_and_the_fix(hf_home):
    for name, repo in (("resnet18d.ra2_in1k", "timm/resnet18d.ra2_in1k"), ("hf-hub:someone/absent", "someone/absent")):
        with pytest.raises(PretrainedWeightsError) as error:
            TimmBackbone(name, pretrained=True)
        message = str(error.value)
        assert repo in message and str(hf_home / "hub") in message and "\n" not in message
        for fix in ("hf download", "huggingface-cli download", "huggingface-cli login", "HF_HUB_OFFLINE=0", "pretrained_path"):
            assert fix in message, fix


def test_a_gated_repository_is_a_named_error(hf_home, monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    class Gated(GatedRepoError):  # what the hub raises for a gated repo without access (no HTTP response needed here)
        def __init__(self, message: str):
            Exception.__init__(self, message)

    def refuse(*args, **kwargs):
        raise Gated("Access to model timm/test_resnet.r160_in1k is restricted.")

    monkeypatch.setattr("timm.models._hub.hf_hub_download", refuse)
    with pytest.raises(PretrainedWeightsError, match="gated repository") as error:
        TimmBackbone(TAG, pretrained=True)
    assert f"https://huggingface.co/timm/{TAG}" in str(error.value) and "accept its licence" in str(error.value)


def test_unknown_tags_and_models_without_weights_are_config_errors():
    with pytest.raises(ConfigError, match=r"no pretrained tag 'fb_in99k'.*convnext_tiny\.fb_in1k"):
        TimmBackbone("convnext_tiny.fb_in99k", img_size=(32, 32))
    with pytest.raises(ConfigError, match="no pretrained weights"):
        TimmBackbone("gresnet_tiny", pretrained=True)
    with pytest.raises(ConfigError, match="not both"):
        TimmBackbone("test_resnet", pretrained=True, pretrained_path="x.pth")
    with pytest.raises(ConfigError, match="set pretrained_path"):
        TimmBackbone("test_resnet", pretrained_key_map="efficientnet_pytorch")


def test_locate_says_whether_weights_are_here_without_loading(hf_home, tmp_path):
    missing = hub.locate(TAG)
    assert (missing.source, missing.where, missing.present, missing.cache) == ("hf-hub", f"timm/{TAG}", False, str(hf_home / "hub"))
    snapshot = write_hf_cache_entry(hf_home / "hub", f"timm/{TAG}", _seeded("test_resnet"))
    assert hub.locate(TAG).present and hub.locate(TAG).path == str(snapshot / "model.safetensors")
    assert hub.locate(f"hf-hub:timm/{TAG}").present and not hub.locate("hf-hub:timm/absent").present
    assert hub.locate(f"local-dir:{snapshot}").present and not hub.locate(f"local-dir:{tmp_path}").present
