"""Every named encoder is built at its real size on the meta device (no memory, no download) and its feature recipe
gives the dimension the registry declares; the docs' table is the registry's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from medconv.errors import ConfigError
from medconv.models.encoder_build import build_encoder_model
from medconv.models.encoder_registry import ENCODERS, EncoderEntry, encoder_entry, resolve_model_args

DOCS = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
#: parameter counts (millions) the model cards and TRIDENT give: a wrong argument changes them
PARAMS_M = {"uni": 303.4, "uni2-h": 681.4, "virchow": 631.2, "virchow2": 631.2, "h-optimus-0": 1134.8,
            "h-optimus-1": 1134.8, "h0-mini": 85.7, "prov-gigapath": 1135.0, "kaiko-vits16": 21.7, "kaiko-vitb16": 85.8,
            "kaiko-vitl14": 303.2, "lunit-vits8": 21.7}
#: the feature sizes users compare with TRIDENT's table
DIMS = {"uni": 1024, "uni2-h": 1536, "virchow": 2560, "virchow2": 2560, "h-optimus-0": 1536, "h-optimus-1": 1536,
        "h0-mini": 1536, "prov-gigapath": 1536, "phikon": 768, "phikon-v2": 1024, "hibou-b": 768, "hibou-l": 1024,
        "kaiko-vits16": 384, "kaiko-vits8": 384, "kaiko-vitb16": 768, "kaiko-vitb8": 768, "kaiko-vitl14": 1024,
        "lunit-vits8": 384, "resnet50-trunc": 1024}


def _skip_without_library(entry: EncoderEntry) -> None:
    if entry.library == "transformers" and not HAS_TRANSFORMERS:
        pytest.skip(f"{entry.name} loads through transformers, not installed (declared dim {entry.feature_dim})")


@pytest.mark.parametrize("name", list(ENCODERS))
def test_entry_builds_at_real_size_and_its_recipe_gives_the_declared_dim(name):
    entry = ENCODERS[name]
    assert entry.feature_dim == DIMS[name]
    _skip_without_library(entry)
    with torch.device("meta"):
        module = build_encoder_model(entry, pretrained=False)
        out = module(torch.empty(2, 3, entry.input_size, entry.input_size))
    assert out.shape == (2, entry.feature_dim) and out.device.type == "meta"
    if name in PARAMS_M:
        assert sum(p.numel() for p in module.parameters()) / 1e6 == pytest.approx(PARAMS_M[name], abs=0.15)


def test_registers_are_left_out_of_the_patch_mean():
    """Virchow2's tokens: class, 4 registers, 16x16 patches; the recipe averages the 256 patches only."""
    entry = ENCODERS["virchow2"]
    with torch.device("meta"):
        module = build_encoder_model(entry, pretrained=False)
    assert module.model.num_prefix_tokens == 5 and module.model.patch_embed.num_patches == 256
    tokens = torch.arange(2 * 261 * 3, dtype=torch.float32).reshape(2, 261, 3)
    module.model.forward_features = lambda x: tokens  # the recipe alone, on known tokens
    out = module(torch.empty(2, 3, 224, 224))
    assert torch.equal(out, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], -1))


def test_entries_are_complete_and_distinct():
    assert len(ENCODERS) >= 10
    assert len({e.hub_id for e in ENCODERS.values()}) == len(ENCODERS)
    for e in ENCODERS.values():
        assert e.licence and e.trained_at and len(e.mean) == len(e.std) == 3 and 0 < e.mpp <= 2
        assert e.extra == ("encoders" if e.library == "transformers" else "")
        assert EncoderEntry.from_record(e.record()).record() == e.record()  # what a feature file keeps rebuilds it


def test_lookup_and_class_arguments():
    assert encoder_entry("encoder:UNI2-h") is ENCODERS["uni2-h"]
    with pytest.raises(ConfigError, match="did you mean .*virchow2"):
        encoder_entry("virchow3")
    args = resolve_model_args(ENCODERS["virchow2"].model_args)
    from timm.layers import SwiGLUPacked

    assert args["mlp_layer"] is SwiGLUPacked and args["act_layer"] is torch.nn.SiLU and args["reg_tokens"] == 4
    with pytest.raises(ConfigError, match="no such class"):
        resolve_model_args({"mlp_layer": "timm.layers.NoSuchLayer"})
    assert resolve_model_args({"act_layer": "os.system"}) == {"act_layer": "os.system"}  # never imported


@pytest.mark.skipif(HAS_TRANSFORMERS, reason="transformers is installed")
def test_transformers_entry_without_transformers_names_the_install():
    with pytest.raises(ConfigError, match=r"phikon.*pip install transformers"):
        build_encoder_model(ENCODERS["phikon"])


def test_docs_table_is_the_registry():
    from medconv.embedding.cli import encoder_table

    assert encoder_table(markdown=True) in DOCS.read_text(), "regenerate: medconv embed --list-encoders markdown"

