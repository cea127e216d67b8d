"""A timm model as a feature extractor: the task owns the head, the data decides input size and channels."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import timm
import torch
from torch import nn

from medconv.errors import ConfigError
from medconv.models import hub
from medconv.models.attention import AttentionKernel, KernelScope, scope_attention_kernel, use_sdpa
from medconv.models.encoder_build import backbone_entry, encoder_weights, recipe_dim, recipe_features
from medconv.models.encoder_registry import PREFIX, EncoderEntry, is_encoder_name, resolve_model_args
from medconv.models.key_maps import KeyMap
from medconv.models.weights import WeightReport, load_local_weights, load_state

#: create_model arguments medconv sets itself, never taken from a hub config.json into a rebuild spec
_BUILD_ARGS = ("in_chans", "img_size", "num_classes", "drop_path_rate", "dynamic_img_size", "pretrained_cfg",
               "pretrained_cfg_overlay", "pretrained_model_args", "cache_dir")
# Families whose attention carries a relative-position bias (an SDPA attn_mask): CUDA flash takes none.
_BIASED_ATTENTION = ("swin_transformer", "swin_transformer_v2")


class TimmBackbone(nn.Module):
    """Any timm model name, returning pooled features of size `num_features`.

    `img_size` and `in_chans` are linked from the data config by the CLI; models that fix their input size
    at construction (ViT position embeddings, Swin windows and masks, Hiera mask units) are built for it,
    non-square included, and their windows clamp to small feature maps. `dynamic_img_size` instead lets
    ViT/Swin take any size per call.

    Pretrained weights come the way timm users have them: `pretrained: true` loads the weights `name` names
    through timm's own hub loading (`timm.create_model(name, pretrained=True)`: the Hugging Face cache, HF_HOME,
    HF_HUB_OFFLINE and login tokens for gated repos apply), or `pretrained_path` loads a local file. Either way
    the weights are adapted to this model by one rule (input conv summed over RGB for 1 channel, position
    embeddings and window tables resized) and `weight_report` says what was loaded, adapted and left out;
    `weights` records where they came from (hub id, commit, file, sha256) for the run record. Weights that
    cannot be had (offline and not cached, gated, unknown repo) are a PretrainedWeightsError saying what to do.

    `encoder:<name>` names a pathology encoder of `medconv.models.encoder_registry` (`encoder:uni2-h`): the entry's
    timm architecture and arguments, its hub weights with `pretrained`, its normalisation for data that leaves
    mean/std unset, and its feature recipe (`cls`, `cls+mean`, `stage-mean`) as the pooled output, so `num_features`
    is the entry's dim. The run record keeps the architecture, arguments and recipe, not the name: a rebuild needs
    neither the hub nor the registry.

    Args:
        name: timm model name, optionally with a pretrained tag or a source: convnext_tiny, convnext_tiny.fb_in22k,
            hf-hub:timm/resnet50d.ra2_in1k, local-dir:/path/to/folder (config.json + weights, timm's layout), or a
            registry encoder: encoder:uni2-h.
        in_chans: input channels (1 for raw mammograms); RGB weights' input conv is adapted to it as timm does.
        img_size: (H, W) the model is built for; ignored by models that take any size (CNNs, PVT-v2).
        pretrained: load the weights `name` names (its tag, timm's default tag, or its hf-hub:/local-dir: source).
        pretrained_path: local timm/safetensors/Lightning/SSL weights; mismatches are reported.
        pretrained_key_map: rename `pretrained_path`'s keys from another library's layout first: a built-in map
            (efficientnet_pytorch) or {regex: replacement} (medconv.models.key_maps).
        strict_weights: make any missing/unexpected/mis-shaped key an error instead of a warning.
        drop_path_rate: stochastic depth.
        grad_checkpointing: recompute blocks in backward (timm's set_grad_checkpointing).
        attention: SDPA kernel for every attention layer: auto (PyTorch chooses), flash, efficient, math.
        channels_last: NHWC weights and inputs (CNN speed-up with AMP on GPU).
        compile: torch.compile the model in place (state-dict keys unchanged).
        dynamic_img_size: accept any input size at run time (ViT, Swin, SwinV2).
        model_args: extra timm constructor arguments (depths, embed_dim, window_size, ...); class-valued ones as
            dotted names from timm.layers or torch.nn (mlp_layer: timm.layers.SwiGLUPacked).
        recipe: the features the head sits on, from the final tokens or maps: cls (class token), cls+mean (class
            token, then the mean of the patch tokens), stage-mean (a features_only CNN's last stage, averaged);
            None: timm's pooled output (`forward_head(pre_logits=True)`). An encoder name sets its entry's.
    """

    def __init__(
        self,
        name: str = "convnext_tiny",
        in_chans: int = 3,
        img_size: tuple[int, int] | int | None = None,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        pretrained_key_map: KeyMap | None = None,
        strict_weights: bool = False,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        attention: AttentionKernel = "auto",
        channels_last: bool = False,
        compile: bool = False,
        dynamic_img_size: bool = False,
        model_args: dict | None = None,
        recipe: Literal["cls", "cls+mean", "stage-mean"] | None = None,
    ):
        super().__init__()
        self.name = name
        self.in_chans = in_chans
        self.model_args = dict(model_args or {})
        entry = _encoder(name)
        if entry is not None:  # the entry's architecture and arguments; img_size and dynamic_img_size are ours to set
            entry_args = dict(entry.model_args)
            entry_size = entry_args.pop("img_size", None)
            entry_args.pop("dynamic_img_size", None)
            self.model_args = {**entry_args, **self.model_args}
            img_size = img_size if img_size is not None else entry_size
            recipe = recipe or entry.recipe
        self.encoder = entry.name if entry is not None else None  # the registry entry the backbone was named by
        self.architecture = entry.architecture if entry is not None else name
        self.recipe = recipe
        self.attention = attention
        self.channels_last = channels_last
        self.dynamic_img_size = dynamic_img_size
        self._scope = KernelScope(attention)  # validates `attention` before the model is built
        if img_size is not None:
            img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        self.img_size = img_size
        if pretrained and pretrained_path:
            raise ConfigError(f"{name}: give pretrained (the weights the name names) or pretrained_path (a file), not both.")
        if pretrained_key_map and not pretrained_path:
            raise ConfigError("pretrained_key_map renames the keys of a pretrained_path file; set pretrained_path too.")
        self.model = create_timm_model(self.architecture, in_chans, img_size, drop_path_rate, dynamic_img_size,
                                       self.model_args)
        #: the width of what `forward` returns, which the task's head takes: the recipe's, else timm's pooled output
        #: (`head_hidden_size`: wider than `num_features` where a pre-logits conv or MLP follows the pooling)
        self.num_features: int = (recipe_dim(self.model, recipe, name) if recipe
                                  else int(getattr(self.model, "head_hidden_size", None) or self.model.num_features))
        self.num_attention_layers = use_sdpa(self.model)
        if not compile:  # compiled graphs recompute inside the graph; the context around forward suffices
            scope_attention_kernel(self.model, attention)
        self.weight_report: WeightReport | None = None
        self.weights: dict | None = None  # where the starting weights came from (the run record keeps it)
        #: the weights' normalisation (pretrained_cfg mean/std for `in_chans`), which data left unset defaults to
        self.pretrained_mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        if pretrained:
            state, cfg = encoder_weights(entry) if entry is not None else hub.load_pretrained(name, self.model_args)
            self.weights = hub.origin(entry.hub_id if entry is not None else name, cfg)
            if entry is not None:  # normalised as the entry says (its model card), whatever the hub config holds
                self.weights |= {"name": name, "encoder": entry.name}
                cfg = {**cfg, "mean": entry.mean, "std": entry.std}
            label = f"{name} ({self.weights['source']} {self.weights['id']})"
            self.weight_report = load_state(self.model, state, WeightReport(path=label), strict=strict_weights)
            self.pretrained_mean_std = hub.mean_std(cfg, in_chans)
        elif pretrained_path:
            self.weight_report = load_local_weights(self.model, Path(pretrained_path), strict=strict_weights,
                                                    key_map=pretrained_key_map)
            self.weights = {"source": "file", "file": str(Path(pretrained_path).resolve()),
                            "sha256": hub.sha256(pretrained_path)}
            if pretrained_key_map:
                self.weights["key_map"] = pretrained_key_map
        if grad_checkpointing:
            self.set_grad_checkpointing(True)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()

    def spec(self) -> dict:
        """class_path + init_args that rebuild this architecture (the weights come from a checkpoint), and `weights`:
        where the starting weights came from. A `hf-hub:` / `local-dir:` name is replaced by the architecture and the
        arguments its config.json gave, so a rebuild reads neither the hub nor the folder; an `encoder:` name by its
        entry's architecture, arguments and recipe, so a rebuild needs no registry either."""
        name, model_args = self.architecture, dict(self.model_args)
        if hub.split_source(name)[0]:
            name = self.model.pretrained_cfg.get("architecture") or name
            given = getattr(self.model, "pretrained_model_args", None) or getattr(self.model, "_model_args", None) or {}
            saved = {k: v for k, v in given.items() if k not in _BUILD_ARGS}
            model_args = {**saved, **model_args}
        args = {"name": name, "in_chans": self.in_chans, "img_size": list(self.img_size) if self.img_size else None,
                "attention": self.attention, "channels_last": self.channels_last,
                "dynamic_img_size": self.dynamic_img_size, "model_args": model_args}
        if self.recipe:
            args["recipe"] = self.recipe
        spec = {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": args}
        if self.weights:
            spec["weights"] = dict(self.weights)
        return spec

    @property
    def family(self) -> str:
        """The timm module the architecture lives in (convnext, swin_transformer_v2, hiera, ...)."""
        return type(getattr(self.model, "_orig_mod", self.model)).__module__.rsplit(".", 1)[-1]

    @property
    def feature_info(self) -> list[dict]:
        """Channels and reduction of each stage, for dense heads built on `feature_maps`."""
        return list(getattr(self.model, "feature_info", []))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def set_input_size(self, img_size: tuple[int, int]) -> None:
        """Rebuild size-dependent parts (ViT position embeddings, Swin windows/masks) for a new input size."""
        if not hasattr(self.model, "set_input_size"):
            raise ConfigError(f"{self.name}: cannot change its input size after construction; rebuild it with img_size.")
        self.model.set_input_size(img_size=tuple(img_size))
        self.img_size = tuple(img_size)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention == "flash" and x.is_cuda and self.family in _BIASED_ATTENTION:
            raise ConfigError(
                f"{self.name}: attention=flash cannot run on CUDA, its window attention adds a relative-position "
                "bias (attn_mask) that flash kernels do not take; use attention: efficient or auto."
            )
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _kernel(self):
        return self._scope.context() if self.num_attention_layers else nullcontext()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled last-stage features in the model's own layout (NCHW for CNNs, NHWC/NLC for ViTs)."""
        with self._kernel():
            if self.recipe == "stage-mean":  # a features_only model: its last requested stage
                return self.model(self._prepare(x))[-1]
            return self.model.forward_features(self._prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, num_features): the recipe's, else timm's; the task's head goes on top."""
        with self._kernel():
            if self.recipe:
                return recipe_features(self.model, self._prepare(x), self.recipe)
            return self.model(self._prepare(x))

    def feature_maps(self, x: torch.Tensor, indices: int | list[int] | None = None) -> list[torch.Tensor]:
        """Per-stage NCHW feature maps (dense uses: segmentation, detection, MIL on feature grids).

        `indices`: stage indices, or the last n stages as an int; all stages by default.
        """
        if not hasattr(self.model, "forward_intermediates"):
            raise ConfigError(f"{self.name}: timm offers no forward_intermediates for it; use features_only models.")
        with self._kernel():
            return self.model.forward_intermediates(
                self._prepare(x), indices=indices, output_fmt="NCHW", intermediates_only=True
            )


def create_timm_model(
    name: str,
    in_chans: int,
    img_size: tuple[int, int] | None,
    drop_path_rate: float,
    dynamic_img_size: bool,
    model_args: dict | None,
) -> nn.Module:
    """timm.create_model headless, random init; size arguments go only to models that take them. A `hf-hub:` or
    `local-dir:` name reads its config.json (the architecture and its arguments), from the cache when offline."""
    if not name.lower().startswith(PREFIX) and is_encoder_name(name) and not timm.is_model(name):
        raise ConfigError(f"{name!r} is a registry encoder, not a timm name: write encoder:{name}.")
    hub.check_name(name)
    kwargs = resolve_model_args(dict(model_args or {}))
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    optional = {}
    if img_size is not None:
        optional["img_size"] = img_size
    if dynamic_img_size:
        optional["dynamic_img_size"] = True
    while True:
        try:
            with hub.hub_errors(name):
                model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs, **optional)
        except TypeError as err:
            dropped = next((k for k in optional if f"'{k}'" in str(err)), None)
            if dropped is None:
                raise
            if dropped == "dynamic_img_size":
                raise ConfigError(f"{name}: dynamic_img_size is not supported by this architecture.") from err
            optional.pop(dropped)  # the architecture takes any input size
        except (AssertionError, ValueError) as err:
            raise ConfigError(f"{name}: cannot build for img_size={img_size}, in_chans={in_chans}: {err}") from err
        else:
            _check_mask_units(name, model)
            return model


def _encoder(name: str) -> EncoderEntry | None:
    """The registry entry an `encoder:<name>` backbone names (transformers entries refused), else None."""
    return backbone_entry(name) if name.lower().startswith(PREFIX) else None


def _check_mask_units(name: str, model: nn.Module) -> None:
    """Hiera unrolls tokens into mask units: each side's token count must be a multiple of the unit."""
    tokens, unit = getattr(model, "tokens_spatial_shape", None), getattr(model, "mask_unit_size", None)
    if tokens is None or unit is None:
        return
    stride = getattr(model, "patch_stride", (1, 1))
    if any(t % u for t, u in zip(tokens, unit, strict=True)):
        multiple = tuple(s * u for s, u in zip(stride, unit, strict=True))
        raise ConfigError(
            f"{name}: img_size must be a multiple of {multiple} (patch stride x mask unit) per side; "
            f"got {tuple(t * s for t, s in zip(tokens, stride, strict=True))}."
        )
