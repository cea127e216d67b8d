"""A loaded run -> the plain timm model that computes what the run computes, or a refusal saying why it cannot.

A classifier is a timm backbone built headless (`num_classes=0`, pooled features) under a `Dropout` + `Linear` head.
timm's own classifier is exactly that linear map on the same pooled features, so `reset_classifier(num_classes)` and
a copy of the head's weights give a model that plain `timm.create_model` rebuilds with its head. A pretraining run
exports the encoder its objective exports (DINO: the EMA teacher, as `encoder.safetensors`), headless.

`check_reproduces` is the proof, not a formality: it compares the written model, loaded back by timm alone, with
the run on the same input, and the export is refused if they differ.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from medconv.errors import CheckpointError, ConfigError
from medconv.runs import Run

#: where each objective keeps the encoder it exports, first match wins: DINO's EMA teacher (`DINO.export_encoder`),
#: else the backbone being pretrained (masked image modelling)
EXPORTED_ENCODER_PREFIXES = ("objective.teacher_backbone.", "backbone.")
#: |timm - run| allowed on the check input; the same weights in the same architecture give 0 up to kernel choice
ATOL, RTOL = 1e-4, 1e-4


def timm_model_of(backbone: nn.Module, ckpt: Any) -> nn.Module:
    """The timm model inside a medconv backbone (`TimmBackbone.model`, compiled or not)."""
    model = getattr(backbone, "model", None)
    model = getattr(model, "_orig_mod", model)
    if model is None or not hasattr(model, "reset_classifier") or not hasattr(model, "pretrained_cfg"):
        raise ConfigError(f"{ckpt}: its backbone ({type(backbone).__name__}) is not a timm model, so it has no timm "
                          "hub format; export works for runs of medconv.models.TimmBackbone.")
    return model


def plain_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode with contiguous (NCHW) weights: a channels-last run's are strided, which safetensors refuses."""
    return copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()


def classifier_for_timm(run: Run) -> nn.Module:
    """The run's backbone with its head as timm's own classifier (eval mode, on the CPU)."""
    module = run.module
    linear = plain_linear_head(getattr(module, "head", None), run.checkpoint)
    model = plain_copy(timm_model_of(getattr(module, "backbone", None), run.checkpoint))
    model.reset_classifier(linear.out_features)
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear) or classifier.weight.shape != linear.weight.shape:
        raise ConfigError(f"{run.checkpoint}: timm's classifier of {model.pretrained_cfg.get('architecture')} is "
                          f"{classifier} but the run's head is {linear}; timm's model cannot hold the run's head.")
    with torch.no_grad():
        classifier.weight.copy_(linear.weight)
        if classifier.bias is not None and linear.bias is not None:
            classifier.bias.copy_(linear.bias)
        elif (classifier.bias is None) != (linear.bias is None):
            raise ConfigError(f"{run.checkpoint}: the run's head and timm's classifier differ in having a bias.")
    return model.eval()


def plain_linear_head(head: nn.Module | None, ckpt: Any) -> nn.Linear:
    """The head's Linear when the head is a Linear after layers that are identities in eval mode (dropout)."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    *before, last = layers if layers else [None]
    if not isinstance(last, nn.Linear) or not all(isinstance(m, nn.Dropout | nn.Identity) for m in before):
        shape = " -> ".join(type(m).__name__ for m in layers)
        raise ConfigError(f"{ckpt}: the run's head ({shape}) is not a linear layer on the pooled features, so timm's "
                          "classifier cannot hold it; only such classifiers are exported in timm's format.")
    return last


def encoder_for_timm(run: Run, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The encoder a pretraining run exports, as its headless timm model (eval mode, on the CPU)."""
    backbone = run.module
    prefix = next((p for p in EXPORTED_ENCODER_PREFIXES if any(k.startswith(p) for k in state_dict)), None)
    if prefix is None:
        raise CheckpointError(f"{run.checkpoint}: holds no encoder weights (no {' or '.join(EXPORTED_ENCODER_PREFIXES)} keys).")
    if prefix != "backbone.":  # load_run serves the backbone being trained; the objective exports another copy
        weights = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        missing, unexpected = backbone.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{run.checkpoint}: the {prefix.rstrip('.')} weights do not fit the backbone its record "
                                  f"describes (missing {missing[:5]}, unexpected {unexpected[:5]}).")
    return plain_copy(timm_model_of(backbone, run.checkpoint))


def exported_module(run: Run, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """What the export writes for this run: a classifier with its head, or a pretraining run's encoder."""
    if run.task == "classify":
        return classifier_for_timm(run)
    if run.task == "pretrain":
        return encoder_for_timm(run, state_dict)
    raise ConfigError(f"{run.checkpoint}: a {run.task} run is not an image model timm can load (MIL models classify "
                      "bags of tile features); export the classification or pretraining run that made its features.")


@torch.no_grad()
def check_reproduces(reference: nn.Module, loaded: nn.Module, input_size: tuple[int, int, int], what: str) -> float:
    """Max |loaded - reference| on a seeded input of `input_size`; refuses the export when they differ."""
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))  # eval mode: per sample anyway
    expected, got = reference.eval()(x).float(), loaded.eval()(x).float()
    if expected.shape != got.shape or not torch.allclose(got, expected, atol=ATOL, rtol=RTOL):
        diff = (got - expected).abs().max().item() if expected.shape == got.shape else float("nan")
        raise ConfigError(f"{what}: plain timm does not reproduce the run (outputs {tuple(got.shape)} vs "
                          f"{tuple(expected.shape)}, max difference {diff:.3g}); nothing was written.")
    return (got - expected).abs().max().item()
