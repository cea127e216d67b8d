"""A registry encoder (`medconv.models.encoder_registry`) as a module that returns its features, built with its hub
weights through the model's own library, so the Hugging Face cache, HF_HOME, HF_HUB_OFFLINE and tokens all apply.

timm entries: `timm.create_model("hf-hub:org/name", pretrained=True, num_classes=0, **model_args)`, wrapped in
`TokenFeatures` (the entry's recipe on the final tokens). transformers entries: `AutoModel.from_pretrained`, wrapped
in `HFTokenFeatures`; without `transformers` installed they fail with the command that installs it. Weights that
cannot be had (not cached while offline, a gated or missing repo) are `medconv.models.hub`'s PretrainedWeightsError,
which names the hub id, the cache searched and the fixes, prefixed with the entry's name.

A timm entry is also a classifier backbone (`TimmBackbone("encoder:<name>")`): `backbone_entry`, `encoder_weights`
(the same hub path, with the entry's arguments) and the recipe functions here serve it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from medconv.errors import ConfigError, MedconvError, PretrainedWeightsError
from medconv.models import hub
from medconv.models.encoder_registry import EncoderEntry, encoder_entry, resolve_model_args

#: the recipes computed on a timm model (a `TimmBackbone` takes them too); hf-* need a transformers model
TIMM_RECIPES = ("cls", "cls+mean", "stage-mean")
#: weights files a hub repo may hold, in the order timm and transformers try them
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class TokenFeatures(nn.Module):
    """A headless timm model and a recipe (`cls`, `cls+mean`, `stage-mean`): images (B, 3, H, W) -> (B, D)."""

    def __init__(self, model: nn.Module, recipe: str):
        super().__init__()
        self.model = model
        self.recipe = recipe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recipe_features(self.model, x, self.recipe)

    def set_input_size(self, img_size: tuple[int, int]) -> None:
        """Rebuild the position embeddings for another input size (timm ViTs); CNNs take any size."""
        if hasattr(self.model, "set_input_size"):
            self.model.set_input_size(img_size=tuple(img_size))


def recipe_features(model: nn.Module, x: torch.Tensor, recipe: str) -> torch.Tensor:
    """The recipe's (B, D) features of images `x`: what `medconv embed` writes and a classifier's head sits on."""
    if recipe == "stage-mean":  # features_only: the last requested stage, (B, C, h, w)
        return model(x)[-1].mean(dim=(2, 3))
    return pool_tokens(model.forward_features(x), recipe, model.num_prefix_tokens)


def pool_tokens(tokens: torch.Tensor, recipe: str, num_prefix_tokens: int) -> torch.Tensor:
    """`cls`: the class token; `cls+mean`: it, then the mean of the patch tokens (class token and registers left out)."""
    cls = tokens[:, 0]  # (B, prefix + patches, D), final norm applied
    if recipe == "cls":
        return cls
    return torch.cat([cls, tokens[:, num_prefix_tokens:].mean(dim=1)], dim=-1)


def recipe_dim(model: nn.Module, recipe: str, name: str) -> int:
    """The width of `recipe_features` for this model; a recipe the model cannot give is a ConfigError."""
    if recipe not in TIMM_RECIPES:
        raise ConfigError(f"{name}: recipe {recipe!r} is not one of {', '.join(TIMM_RECIPES)} (the hf-* recipes are "
                          "for transformers models, which `medconv embed` runs).")
    if recipe == "stage-mean":
        info = getattr(model, "feature_info", None)
        if not callable(getattr(info, "channels", None)):
            raise ConfigError(f"{name}: recipe stage-mean averages the last stage of a features_only model; add "
                              "features_only: true (and out_indices) to model_args.")
        return int(info.channels()[-1])
    if not getattr(model, "num_prefix_tokens", 0) or getattr(model, "cls_token", None) is None:
        raise ConfigError(f"{name}: recipe {recipe} reads the class token, and this model has none; use a ViT with a "
                          "class token, or leave recipe unset for timm's pooled features.")
    return int(model.num_features) * (2 if recipe == "cls+mean" else 1)


class HFTokenFeatures(nn.Module):
    """A transformers vision model and a recipe (`hf-cls`, `hf-pooler`): images (B, 3, H, W) -> (B, D)."""

    def __init__(self, model: nn.Module, recipe: str):
        super().__init__()
        self.model = model
        self.recipe = recipe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        return out.pooler_output if self.recipe == "hf-pooler" else out.last_hidden_state[:, 0]


def build_encoder_model(entry: EncoderEntry, pretrained: bool = True, revision: str | None = None) -> nn.Module:
    """The entry's network returning its features, in eval mode; `pretrained=False` builds it without weights (and
    without the hub: e.g. on the meta device). `revision`: a hub commit to load, as a feature file recorded it."""
    if entry.library == "transformers":
        return _transformers(entry, pretrained, revision).eval()
    import timm

    source = entry.hub_id + (f"@{revision}" if revision else "") if pretrained else entry.architecture
    args = resolve_model_args(entry.model_args)
    if not pretrained:
        return TokenFeatures(timm.create_model(source, pretrained=False, num_classes=0, **args), entry.recipe).eval()
    with _named(entry):
        try:
            with hub.hub_errors(source):
                model = timm.create_model(source, pretrained=True, num_classes=0, **args)
        except MedconvError:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError) as err:
            raise _weights_unfit(entry, source, err) from err
    return TokenFeatures(model, entry.recipe).eval()


def backbone_entry(name: str) -> EncoderEntry:
    """The entry an `encoder:<name>` backbone names; only timm entries can be a classifier's backbone."""
    entry = encoder_entry(name)
    if entry.library != "timm":
        raise ConfigError(
            f"encoder {entry.name} ({entry.hub_id}) loads through Hugging Face {entry.library} (the medconv extra "
            f"'{entry.extra}': pip install 'medconv[{entry.extra}]'), and a classifier backbone is a timm model, so it "
            f"cannot be one yet. Embed slides with it (`medconv embed {entry.name} ...`) and train a MIL model on the "
            "features, or pick a timm entry (extra '-' in `medconv embed --list-encoders`)."
        )
    return entry


def encoder_weights(entry: EncoderEntry) -> tuple[dict[str, torch.Tensor], dict]:
    """The entry's hub tensors and pretrained_cfg, loaded by timm for the entry's architecture and arguments (what an
    `encoder:<name>` backbone starts from); errors name the entry, as `build_encoder_model`'s do."""
    with _named(entry):
        try:
            return hub.load_pretrained(entry.hub_id, entry.model_args)
        except PretrainedWeightsError:
            raise
        except (ConfigError, RuntimeError, ValueError, TypeError, KeyError) as err:
            raise _weights_unfit(entry, entry.hub_id, err) from err


def cached_weights(entry: EncoderEntry, revision: str | None = None) -> tuple[Path, str] | None:
    """(weights file in the Hugging Face cache, its commit) for the entry's repo, or None when none is cached."""
    from huggingface_hub import try_to_load_from_cache

    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(entry.repo_id, filename, revision=revision)
        if isinstance(found, str):
            path = Path(found)
            return path, path.parent.name
    return None


def _weights_unfit(entry: EncoderEntry, source: str, err: Exception) -> ConfigError:
    """The hub's weights were had but do not build the registry's architecture (a changed repo, a wrong entry)."""
    if isinstance(err, ConfigError) and err.__cause__ is not None:  # hub.load_pretrained's: say what timm said
        err = err.__cause__
    detail = " ".join(str(err).split())[:300]  # a state-dict error lists every key: the first ones say enough
    return ConfigError(f"encoder {entry.name}: the weights of {source} do not fit {entry.architecture} with the "
                       f"registry's arguments ({type(err).__name__}: {detail}); pin the revision the entry was checked "
                       "against or correct the entry.")


def _transformers(entry: EncoderEntry, pretrained: bool, revision: str | None) -> nn.Module:
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(f"encoder {entry.name} ({entry.hub_id}) is loaded through Hugging Face transformers, which "
                          "is not installed: pip install transformers (or pip install 'medconv[encoders]').") from err
    if not pretrained:
        args = dict(entry.model_args)
        config = transformers.AutoConfig.for_model(args.pop("model_type"), **args)
        return HFTokenFeatures(transformers.AutoModel.from_config(config), entry.recipe)
    with _named(entry), hub.hub_errors(entry.hub_id + (f"@{revision}" if revision else "")):
        try:
            model = transformers.AutoModel.from_pretrained(entry.repo_id, revision=revision,
                                                           trust_remote_code=entry.trust_remote_code)
        except OSError as err:  # transformers re-raises the hub's error as an OSError; its cause says which
            if type(err.__cause__).__module__.startswith("huggingface_hub"):
                raise err.__cause__ from err
            raise
    return HFTokenFeatures(model, entry.recipe)


@contextlib.contextmanager
def _named(entry: EncoderEntry):
    """Prefix the hub's error (medconv.models.hub.hub_errors: hub id, cache searched, fixes) with the entry's name."""
    try:
        yield
    except PretrainedWeightsError as err:
        raise PretrainedWeightsError(f"encoder {entry.name}: {err}") from err
