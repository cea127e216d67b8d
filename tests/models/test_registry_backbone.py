"""A registry encoder as a classifier backbone (`encoder:<name>`), from an offline Hugging Face cache: its features are
the entry's recipe on the cached weights, a frozen probe trains only its head, the data defaults to the entry's
normalisation, and the checkpoint rebuilds with neither the hub nor the registry. Also: the pooled width of timm
models whose pre-logits layer widens the features (head_hidden_size)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from medconv import keys
from medconv.errors import ConfigError, PretrainedWeightsError
from medconv.models import TimmBackbone
from medconv.models.encoder_registry import ENCODERS, SWIGLU, EncoderEntry, resolve_model_args
from medconv.runs import load_run
from medconv.tasks import ClassificationModule

from ..conftest import write_hf_cache_entry

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BACKBONE = "--model.init_args.backbone.init_args"
MEAN, STD = (0.6, 0.5, 0.4), (0.2, 0.25, 0.3)  # not timm's defaults: the entry's must be the ones used
#: Virchow2's entry (SwiGLU MLP, SiLU, 4 registers, class token + mean of patch tokens) at a tiny size
TINY_ARGS = {**ENCODERS["virchow2"].model_args, "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1,
             "num_heads": 2}
ENTRY = EncoderEntry("tiny-virchow2", "hf-hub:medconv-test/tiny-virchow2", "vit_huge_patch14_224", TINY_ARGS, "cls+mean",
                     64, 32, MEAN, STD)


@pytest.fixture
def tiny_entry(hf_home, monkeypatch) -> Path:
    """The tiny Virchow2-like entry registered and its weights in the offline cache, under a config.json that, like
    Virchow2's, leaves out the class-valued arguments (so only the entry's arguments build what the weights fit)."""
    monkeypatch.setitem(ENCODERS, ENTRY.name, ENTRY)
    torch.manual_seed(0)
    model = timm.create_model(ENTRY.architecture, num_classes=0, **resolve_model_args(ENTRY.model_args))
    model._model_args = {k: v for k, v in model._model_args.items() if k not in SWIGLU}
    return write_hf_cache_entry(hf_home / "hub", ENTRY.repo_id, model, pretrained_cfg={"mean": [0.5] * 3, "std": [0.5] * 3})


def _by_hand(snapshot: Path, x: torch.Tensor) -> torch.Tensor:
    """cls+mean on the cached weights: the class token, then the mean of the 16 patch tokens (not the 4 registers)."""
    model = timm.create_model(ENTRY.architecture, num_classes=0, **resolve_model_args(ENTRY.model_args)).eval()
    model.load_state_dict(load_file(snapshot / "model.safetensors"))
    with torch.no_grad():
        tokens = model.forward_features(x)
    assert tokens.shape[1] == 1 + 4 + 16
    return torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)


def test_encoder_backbone_features_are_the_entrys_recipe_on_the_cached_weights(tiny_entry):
    backbone = TimmBackbone(f"encoder:{ENTRY.name}", img_size=(32, 32), pretrained=True, strict_weights=True).eval()
    assert backbone.num_features == ENTRY.feature_dim == 64 and backbone.recipe == "cls+mean"
    assert backbone.weight_report.ok and backbone.pretrained_mean_std == (MEAN, STD)  # the entry's, not the hub cfg's
    weights = backbone.weights
    assert weights["encoder"] == ENTRY.name and weights["id"] == ENTRY.repo_id and weights["commit"] == "0" * 40
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = backbone(x)
    torch.testing.assert_close(features, _by_hand(tiny_entry, x))

    spec = backbone.spec()["init_args"]  # the architecture, its arguments and the recipe: not the registry name
    assert spec["name"] == ENTRY.architecture and spec["recipe"] == "cls+mean"
    assert spec["model_args"]["mlp_layer"] == "timm.layers.SwiGLUPacked" and "img_size" not in spec["model_args"]


class _Tiles(L.LightningDataModule):
    """What the run record reads from a datamodule (image size, channels, classes, normalisation) and a few batches."""

    image_size, in_chans, classes, mean, std = (32, 32), 3, ["a", "b"], MEAN, STD

    def train_dataloader(self) -> DataLoader:
        torch.manual_seed(1)
        images, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 1] * 4)
        return DataLoader([{keys.IMAGE: i, keys.LABEL: y} for i, y in zip(images, labels, strict=True)], batch_size=4)


def test_frozen_encoder_trains_only_its_head_and_rebuilds_offline_from_the_checkpoint(tiny_entry, tmp_path, monkeypatch):
    module = ClassificationModule(TimmBackbone(f"encoder:{ENTRY.name}", img_size=(32, 32), pretrained=True),
                                  freeze_backbone=True, scheduler=None)
    assert module.head[1].in_features == 64
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_Tiles())
    changed = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.1.weight", "head.1.bias"}
    ckpt = tmp_path / "probe.ckpt"
    trainer.save_checkpoint(ckpt)

    def refuse(*args, **kwargs):
        raise AssertionError(f"hub access during a rebuild: {args} {kwargs}")

    monkeypatch.delitem(ENCODERS, ENTRY.name)  # nor the registry: a site's own entry may be gone where it is served
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("timm.models._hub.hf_hub_download", refuse)
    monkeypatch.setattr("medconv.models.hub.load_pretrained", refuse)
    run = load_run(ckpt)
    assert run.mean_std == (MEAN, STD) and run.image_size == (32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run.module(x), module.eval()(x))


def test_cli_data_defaults_to_the_entrys_normalisation(tiny_entry):
    from medconv.lightning_cli import MedconvCLI

    stack = [a for c in ("wsi_convnext.yaml", "tests/tiny_wsi.yaml") for a in ("--config", str(CONFIGS / c))]
    cli = MedconvCLI(args=[*stack, f"{BACKBONE}.name", f"encoder:{ENTRY.name}", f"{BACKBONE}.pretrained", "true",
                           "--model.init_args.freeze_backbone", "true"],
                     run=False, subclass_mode_model=True, subclass_mode_data=True)
    assert cli.datamodule.mean == MEAN and cli.datamodule.std == STD and cli.config.data.init_args.mean == list(MEAN)
    backbone = cli.model.backbone  # built for the data's 64 px tiles: position embeddings resized from 4x4 patches
    assert backbone.img_size == (64, 64) and backbone.weight_report.ok and backbone.weight_report.resized == ["pos_embed"]
    assert cli.model.head[1].in_features == 64 and not any(p.requires_grad for p in backbone.parameters())


def test_stage_mean_entry_averages_the_last_stage_of_the_cached_cnn(hf_home, monkeypatch):
    entry = EncoderEntry("tiny-trunc", "hf-hub:medconv-test/tiny-resnet", "test_resnet",
                         {"features_only": True, "out_indices": [3]}, "stage-mean", 192, 32, MEAN, STD)
    monkeypatch.setitem(ENCODERS, entry.name, entry)
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=0).eval()
    write_hf_cache_entry(hf_home / "hub", entry.repo_id, source)
    backbone = TimmBackbone(f"encoder:{entry.name}", pretrained=True).eval()
    assert backbone.num_features == entry.feature_dim and backbone.weight_report.ok
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = source.layer3(source.layer2(source.layer1(source.maxpool(source.act1(source.bn1(source.conv1(x)))))))
        torch.testing.assert_close(backbone(x), maps.mean(dim=(2, 3)))


def test_encoder_names_that_cannot_be_a_backbone_say_why(hf_home, monkeypatch):
    with pytest.raises(ConfigError, match=r"transformers.*pip install 'medconv\[encoders\]'.*medconv embed phikon"):
        TimmBackbone("encoder:phikon")
    with pytest.raises(ConfigError, match="write encoder:uni2-h"):
        TimmBackbone("uni2-h")
    with pytest.raises(ConfigError, match="did you mean uni"):
        TimmBackbone("encoder:unii")
    monkeypatch.setitem(ENCODERS, ENTRY.name, ENTRY)  # registered, its weights not in the cache: the hub's message
    with pytest.raises(PretrainedWeightsError) as error:
        TimmBackbone(f"encoder:{ENTRY.name}", pretrained=True)
    message = str(error.value)
    assert message.startswith(f"encoder {ENTRY.name}: {ENTRY.hub_id}: cannot get the pretrained weights")
    assert str(hf_home / "hub") in message and f"hf download {ENTRY.repo_id}" in message and "\n" not in message


def test_hub_weights_that_do_not_fit_the_given_model_args_are_a_config_error(hf_home):
    dims = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
    write_hf_cache_entry(hf_home / "hub", "someone/tiny-convnext", timm.create_model("convnext_atto", **dims),
                         model_args=dims)
    with pytest.raises(ConfigError, match=r"do not fit the architecture built with model_args .*pretrained_path"):
        TimmBackbone("hf-hub:someone/tiny-convnext", img_size=(32, 32), pretrained=True,
                     model_args={"dims": [8, 16, 24, 40]})


def test_num_features_is_the_pooled_width_where_a_pre_logits_layer_widens_it():
    backbone = TimmBackbone("mobilenetv3_small_050", img_size=(32, 32))  # 288 channels, then a 1024-wide conv head
    assert backbone.model.num_features == 288 and backbone.num_features == backbone.model.head_hidden_size == 1024
    module = ClassificationModule(backbone, num_classes=3).eval()
    assert module.head[1].in_features == 1024
    with torch.no_grad():
        assert module(torch.randn(2, 3, 32, 32)).shape == (2, 3)


#: one of each layout: registers + no_embed_class + SwiGLU (cls), registers (cls+mean), DINOv2 registers, plain ViT, CNN
@pytest.mark.parametrize("name", ["uni2-h", "virchow2", "h-optimus-0", "kaiko-vits16", "resnet50-trunc"])
def test_timm_entries_are_backbones_of_their_declared_dim_and_rebuild_from_their_spec(name):
    """At the real size, on the meta device (no memory, no weights): the head's width is the entry's dim."""
    entry = ENCODERS[name]
    size = (entry.input_size, entry.input_size)
    with torch.device("meta"):
        backbone = TimmBackbone(f"encoder:{name}", img_size=size)
        rebuilt = TimmBackbone(**backbone.spec()["init_args"])
        out = rebuilt(torch.empty(2, 3, *size))
    assert backbone.num_features == rebuilt.num_features == entry.feature_dim and out.shape == (2, entry.feature_dim)
