"""Pathology patch encoders by name: one entry of data per model (where its weights live, how to build it, which
tokens make its features, how to normalise its input), so `medconv embed uni2-h` needs no model-specific code.

Each entry was checked against the model card, TRIDENT's and eva's loaders, and a meta-device build (the parameter
count and token layout the card gives). `model_args` are the complete timm constructor arguments of the released
architecture: the same arguments build it without weights (tests, on the meta device) and with the hub's weights
(`timm.create_model(hub_id, pretrained=True, **model_args)`). Arguments that are classes (SwiGLU MLPs, SiLU) are
written as dotted names and resolved by `resolve_model_args`, so an entry and the feature files that name it stay JSON.

Feature recipes (`recipe`), on the final normalised tokens of a ViT or the last feature map of a CNN:
- `cls`: the class token;
- `cls+mean`: the class token, then the mean of the patch tokens (class token and registers left out), concatenated;
- `stage-mean`: global average of the last stage a `features_only` CNN returns (CLAM's truncated ResNet-50);
- `hf-cls` / `hf-pooler`: a `transformers` model's `last_hidden_state[:, 0]` / `pooler_output`.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

from medconv.errors import ConfigError

RECIPES = ("cls", "cls+mean", "stage-mean", "hf-cls", "hf-pooler")
LIBRARIES = {"timm": "", "transformers": "encoders"}  # library -> the medconv extra that installs it
#: the only modules a dotted-name argument may come from (layers and activations, nothing that runs on import)
_CLASS_ARG_MODULES = ("timm.layers", "torch.nn")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
LUNIT = ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464))
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}


@dataclass(frozen=True)
class EncoderEntry:
    """One named encoder. `hub_id` is what timm's `create_model` takes (`hf-hub:org/name`). The fields up to
    `trust_remote_code` decide the features (`record()`); the rest describe the model to its users."""

    name: str
    hub_id: str
    architecture: str  # timm model name; for transformers entries, the model class it loads as
    model_args: dict[str, Any]  # timm constructor args (transformers: config args, for a weightless build)
    recipe: str
    feature_dim: int
    input_size: int  # the side of the square image the network was trained on
    mean: tuple[float, ...]
    std: tuple[float, ...]
    library: str = "timm"
    trust_remote_code: bool = False  # transformers entries whose repo ships its own model code
    mpp: float = 0.5  # tile resolution to embed at, um/px (0.5 = 20x)
    tile_size: int | None = None  # tile side at `mpp` before resizing to `input_size`; None: input_size
    trained_at: str = ""  # what the authors trained on, in words
    licence: str = ""
    gated: bool = False  # the hub asks for an accepted licence and a logged-in account
    note: str = ""

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"encoder {self.name}: recipe {self.recipe!r} is not one of {', '.join(RECIPES)}.")
        if self.library not in LIBRARIES:
            raise ConfigError(f"encoder {self.name}: library {self.library!r} is not one of {', '.join(LIBRARIES)}.")
        if not self.hub_id.startswith("hf-hub:") or "/" not in self.hub_id:
            raise ConfigError(f"encoder {self.name}: hub_id {self.hub_id!r} must read hf-hub:org/name.")

    @property
    def repo_id(self) -> str:
        """The Hugging Face repo (`org/name`), as `hf download` and the cache folder name it."""
        return self.hub_id.split(":", 1)[1]

    @property
    def extra(self) -> str:
        """The medconv extra a user installs for it (`pip install 'medconv[encoders]'`), or '' for plain timm."""
        return LIBRARIES[self.library]

    @property
    def tile(self) -> int:
        return self.tile_size or self.input_size

    def record(self) -> dict[str, Any]:
        """The fields that decide the features, as JSON: what a feature file keeps to rebuild the encoder."""
        return {k: getattr(self, k) for k in _RECORD_FIELDS} | {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EncoderEntry:
        """The entry a feature file's encoder record describes (registered here or not)."""
        try:
            return cls(**{k: record[k] for k in _RECORD_FIELDS if k in record})
        except TypeError as err:
            raise ConfigError(f"encoder record of {record.get('name')!r} is incomplete ({err}); re-embed.") from err


_RECORD_FIELDS = ("name", "hub_id", "architecture", "model_args", "recipe", "feature_dim", "input_size", "mean", "std",
                  "library", "trust_remote_code")


def _vit(name: str, hub: str, arch: str, args: dict, recipe: str, dim: int, mean_std, licence: str, gated: bool,
         trained_at: str = "20x (0.5 um/px)", **kw: Any) -> EncoderEntry:
    args = {"img_size": 224, **args, "dynamic_img_size": True}
    return EncoderEntry(name, f"hf-hub:{hub}", arch, args, recipe, dim, 224, *mean_std, trained_at=trained_at,
                        licence=licence, gated=gated, **kw)


def _kaiko(size: str, arch: str, dim: int, reg: bool = False) -> EncoderEntry:
    return _vit(f"kaiko-{size}", f"1aurent/{arch}.kaiko_ai_towards_large_pathology_fms", arch, {}, "cls", dim, HALF,
                "kaiko-non-commercial", False, trained_at="TCGA, mixed magnifications",
                note="DINOv2 with 4 registers" if reg else "")


_NC_ND = "CC-BY-NC-ND-4.0"
_ENTRIES = (
    _vit("uni", "MahmoodLab/UNI", "vit_large_patch16_224", {"patch_size": 16, "init_values": 1e-5}, "cls", 1024,
         IMAGENET, _NC_ND, True),
    _vit("uni2-h", "MahmoodLab/UNI2-h", "vit_giant_patch14_224",
         {"patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
          "no_embed_class": True, **SWIGLU, "reg_tokens": 8}, "cls", 1536, IMAGENET, _NC_ND, True),
    _vit("virchow", "paige-ai/Virchow", "vit_huge_patch14_224",
         {"init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "", **SWIGLU}, "cls+mean", 2560, IMAGENET,
         "Apache-2.0", True),
    _vit("virchow2", "paige-ai/Virchow2", "vit_huge_patch14_224",
         {"init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "", "reg_tokens": 4, **SWIGLU}, "cls+mean", 2560,
         IMAGENET, _NC_ND, True, trained_at="mixed 5x-40x"),
    _vit("h-optimus-0", "bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2", {"init_values": 1e-5}, "cls", 1536,
         HOPTIMUS, "Apache-2.0", False),
    _vit("h-optimus-1", "bioptimus/H-optimus-1", "vit_giant_patch14_reg4_dinov2", {"init_values": 1e-5}, "cls", 1536,
         HOPTIMUS, _NC_ND, True),
    _vit("h0-mini", "bioptimus/H0-mini", "vit_base_patch14_reg4_dinov2",
         {"mlp_ratio": 2.66667 * 2, "global_pool": "", **SWIGLU}, "cls+mean", 1536, HOPTIMUS, _NC_ND, True,
         note="distilled from H-optimus-0; cls alone (768) is the card's linear-probe choice"),
    _vit("prov-gigapath", "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2",
         {"patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334},
         "cls", 1536, IMAGENET, "Apache-2.0 (research use)", True),
    _kaiko("vits16", "vit_small_patch16_224", 384),
    _kaiko("vits8", "vit_small_patch8_224", 384),
    _kaiko("vitb16", "vit_base_patch16_224", 768),
    _kaiko("vitb8", "vit_base_patch8_224", 768),
    _kaiko("vitl14", "vit_large_patch14_reg4_dinov2", 1024, reg=True),
    _vit("lunit-vits8", "1aurent/vit_small_patch8_224.lunit_dino", "vit_small_patch8_224", {}, "cls", 384, LUNIT,
         "lunit-non-commercial", False, trained_at="20x and 40x"),
    EncoderEntry("resnet50-trunc", "hf-hub:timm/resnet50.tv_in1k", "resnet50", {"features_only": True, "out_indices": [3]},
                 "stage-mean", 1024, 224, *IMAGENET, trained_at="ImageNet-1k (torchvision)", licence="BSD-3-Clause",
                 tile_size=256, note="CLAM's baseline: ResNet-50 cut after layer3, average-pooled"),
    EncoderEntry("phikon", "hf-hub:owkin/phikon", "ViTModel (ViT-B/16)",
                 {"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "patch_size": 16, "image_size": 224},
                 "hf-cls", 768, 224, *IMAGENET, "transformers", trained_at="20x (0.5 um/px)",
                 licence="owkin-non-commercial"),
    EncoderEntry("phikon-v2", "hf-hub:owkin/phikon-v2", "Dinov2Model (ViT-L/16)",
                 {"model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "patch_size": 16, "image_size": 224},
                 "hf-cls", 1024, 224, *IMAGENET, "transformers", trained_at="20x (0.5 um/px)",
                 licence="owkin-non-commercial"),
    EncoderEntry("hibou-b", "hf-hub:histai/hibou-b", "Dinov2 with registers (ViT-B/14, remote code)",
                 {"model_type": "dinov2_with_registers", "hidden_size": 768, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "patch_size": 14, "image_size": 224, "num_register_tokens": 4},
                 "hf-pooler", 768, 224, *HIBOU, "transformers", True, trained_at="mixed magnifications",
                 licence="Apache-2.0", gated=True),
    EncoderEntry("hibou-l", "hf-hub:histai/hibou-L", "Dinov2 with registers (ViT-L/14, remote code)",
                 {"model_type": "dinov2_with_registers", "hidden_size": 1024, "num_hidden_layers": 24,
                  "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "num_register_tokens": 4},
                 "hf-pooler", 1024, 224, *HIBOU, "transformers", True, trained_at="mixed magnifications",
                 licence="Apache-2.0", gated=True),
)
ENCODERS: dict[str, EncoderEntry] = {entry.name: entry for entry in _ENTRIES}
PREFIX = "encoder:"  # `encoder:uni` names an entry where a timm name could also be meant


def is_encoder_name(name: str) -> bool:
    """True for a registry name (`uni`, `UNI2-h`, `encoder:virchow2`)."""
    return name.lower().removeprefix(PREFIX) in ENCODERS


def encoder_entry(name: str) -> EncoderEntry:
    """The entry called `name` (case-insensitive, `encoder:` prefix optional); a close match is suggested."""
    key = name.lower().removeprefix(PREFIX)
    if key in ENCODERS:
        return ENCODERS[key]
    close = difflib.get_close_matches(key, list(ENCODERS), n=3)
    raise ConfigError(f"encoder {name!r} is not in medconv's registry" + (f" (did you mean {', '.join(close)}?)" if close
                      else "") + "; `medconv embed --list-encoders` lists them.")


def register_encoder(entry: EncoderEntry, replace: bool = False) -> EncoderEntry:
    """Add an entry (a site's own encoder, or a tiny one in tests); an existing name needs `replace`."""
    if entry.name in ENCODERS and not replace:
        raise ConfigError(f"encoder {entry.name!r} is already registered; pass replace=True to redefine it.")
    ENCODERS[entry.name] = entry
    return entry


def resolve_model_args(args: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments with dotted class names (`timm.layers.SwiGLUPacked`) turned into the classes."""
    out = dict(args)
    for key, value in args.items():
        if isinstance(value, str) and value.startswith(tuple(m + "." for m in _CLASS_ARG_MODULES)):
            module, _, attr = value.rpartition(".")
            try:
                out[key] = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"model argument {key}={value!r}: no such class ({err}).") from err
    return out


def encoder_rows() -> list[dict[str, str]]:
    """One row per entry, the columns `medconv embed --list-encoders` prints and docs/embedding.md shows."""
    rows = []
    for e in ENCODERS.values():
        rows.append({"name": e.name, "hub id": e.hub_id, "arch": e.architecture, "recipe": e.recipe,
                     "dim": str(e.feature_dim), "input": f"{e.input_size}" + (f" (tile {e.tile_size})" if e.tile_size
                                                                                else ""),
                     "mpp": f"{e.mpp:g}", "licence": e.licence, "gated": "yes" if e.gated else "no",
                     "extra": f"{e.extra} ({e.library})" if e.extra else "-"})
    return rows
