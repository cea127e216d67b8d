"""`export_run`: a medconv checkpoint (or run folder) -> a folder in the timm / Hugging Face hub format.

The folder holds `config.json` and `model.safetensors` (what `timm.create_model("local-dir:DIR", pretrained=True)`
and, once uploaded, `hf-hub:ORG/NAME` load), a model card `README.md`, and on request `medconv.ckpt` (the weights
and run record only, for `medconv infer`). Before the folder appears, timm alone loads it back and must give the
run's outputs on the same input; otherwise nothing is written.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from medconv import __version__
from medconv.errors import ConfigError
from medconv.export.card import CardInputs, model_card
from medconv.export.folder import check_target, staged_folder
from medconv.export.hub_config import write_timm_files
from medconv.export.model import check_reproduces, exported_module
from medconv.export.reports import best_validation, test_reports
from medconv.runs import Run, find_checkpoint, load_run, read_checkpoint
from medconv.tasks.run_record import RUN_KEY

SLIM_CHECKPOINT = "medconv.ckpt"


@dataclass
class Export:
    out: Path
    run: Run
    config: dict[str, Any]
    max_difference: float  # |timm - run| on the check input
    files: list[Path]


def export_run(path: str | Path, out: str | Path, *, force: bool = False, license_: str = "other",
               hub_id: str | None = None, name: str | None = None, with_checkpoint: bool = False) -> Export:
    """Export the run at `path` (a .ckpt or a run folder) into `out`; see the module docstring."""
    out = Path(out)
    check_target(out, force)  # before loading anything
    ckpt = find_checkpoint(path)
    run = load_run(ckpt)
    state = read_checkpoint(ckpt)
    weights = state.get("state_dict") or {}
    model = exported_module(run, weights)
    source = checkpoint_info(ckpt, state)
    with staged_folder(out, force) as tmp:
        config = write_timm_files(model, tmp, run, source, license_)
        try:
            loaded = timm.create_model(f"local-dir:{tmp}", pretrained=True)
        except (RuntimeError, ValueError, TypeError) as err:
            raise ConfigError(f"{ckpt}: plain timm cannot load the export ({err}); nothing was written.") from err
        diff = check_reproduces(run.module, loaded, (run.in_chans, *run.image_size), str(ckpt))
        if with_checkpoint:
            torch.save(slim_checkpoint(run, model, state), tmp / SLIM_CHECKPOINT)
        card = CardInputs(name=name or out.name, license=license_, hub_id=hub_id, architecture=config["architecture"],
                          n_params=sum(p.numel() for p in model.parameters()), num_features=int(model.num_features),
                          custom_architecture=type(model).__module__.startswith("medconv."), checkpoint=source,
                          tests=test_reports(ckpt) if run.task == "classify" else [],
                          validation=best_validation(ckpt) if run.task == "classify" else {}, with_checkpoint=with_checkpoint)
        (tmp / "README.md").write_text(model_card(run, card), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
    return Export(out, run, config, diff, [out / f for f in files])


def checkpoint_info(ckpt: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Which checkpoint the weights are, identified by content (sha256), and how long it had trained."""
    digest = hashlib.sha256()
    with ckpt.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    epoch = int(state.get("epoch") or 0)
    return {"file": ckpt.name, "sha256": digest.hexdigest(), "epoch": epoch, "epochs": epoch + 1,
            "global_step": int(state.get("global_step") or 0), "medconv_version": __version__,
            "exported": time.strftime("%Y-%m-%d")}


def slim_checkpoint(run: Run, model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """Weights + run record, no optimiser: what `load_run` (so `medconv infer` and `medconv embed`) needs.

    A pretraining run keeps only the exported encoder, under `backbone.` where `load_run` looks for it."""
    weights = state.get("state_dict") or {}
    if run.task == "pretrain":
        weights = {f"backbone.model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    keep = {k: state[k] for k in ("epoch", "global_step", "hyper_parameters") if k in state}
    return {**keep, "state_dict": weights, RUN_KEY: run.record}
