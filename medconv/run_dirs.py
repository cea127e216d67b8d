"""Where a run writes: pure path logic, so no command can reuse or delete another run's files.

`fit` gets `<root>/<name>/version_N` (a new N unless resuming that run); `validate | test | predict` write
into `<run>/eval/<subcommand>-<timestamp>` when they evaluate a run's checkpoint or config, else into
`<root>/<name>/eval/...`. `--ckpt_path best|last` is resolved inside the run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from medconv.errors import CheckpointError

EVAL_DIR = "eval"


def next_version(root: Path) -> int:
    found = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(found, default=-1) + 1


def latest_resumable(root: Path) -> Path | None:
    """The newest run directory under `root` that has checkpoints/last.ckpt."""
    candidates = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: int(p.parts[-3].split("_")[1]))
    return candidates[-1].parent.parent if candidates else None


def is_run(path: Path) -> bool:
    return (path / "checkpoints").is_dir() or (path / "summary.json").is_file()


def run_of(ckpt_path: str | None, configs: Sequence[str]) -> Path | None:
    """The run a command evaluates: the checkpoint's (`<run>/checkpoints/x.ckpt`), else a config's folder."""
    if ckpt_path and ckpt_path not in ("best", "last"):
        ckpt = Path(ckpt_path)
        if ckpt.parent.name == "checkpoints":
            return ckpt.parent.parent
    for config in reversed(list(configs)):
        folder = Path(config).parent
        if is_run(folder):
            return folder
    return None


def is_external(data, run: Path) -> bool:  # noqa: ANN001 -- the `data` section of a parsed config
    """True when the config evaluates another manifest than the one the run was fitted on."""
    init_args = getattr(data, "init_args", None)
    if init_args is None or "test_fraction" not in init_args or not (run / "config.yaml").is_file():
        return False
    current = init_args.get("manifest")
    fitted = ((yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data") or {}).get("init_args", {}).get("manifest")
    if current is None:
        return False
    return fitted is None or Path(str(current)).resolve() != Path(str(fitted)).resolve()


def resolve_checkpoint(ckpt_path: str | None, run: Path | None) -> str | None:
    """`best` / `last` inside `run`; any other value must be an existing file. Errors say what to pass instead."""
    if ckpt_path is None:
        return None
    if ckpt_path not in ("best", "last"):
        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"{ckpt_path}: checkpoint not found; pass an existing .ckpt file, or `best` / `last` "
                                  "with --config <run>/config.yaml.")
        return ckpt_path
    if run is None:
        raise CheckpointError(f"--ckpt_path {ckpt_path} needs the run it belongs to: pass --config <run>/config.yaml "
                              "(the config.yaml that fit wrote into the run directory).")
    if ckpt_path == "last":
        last = run / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise CheckpointError(f"{run}: no checkpoints/last.ckpt; the run saved none (save_last: false?).")
        return str(last)
    summary = run / "summary.json"
    if summary.is_file():
        best = json.loads(summary.read_text()).get("best_checkpoint")
        if best and Path(best).is_file():
            return best
    candidates = sorted(p for p in (run / "checkpoints").glob("*.ckpt") if not p.name.startswith("last"))
    if len(candidates) == 1:
        return str(candidates[0])
    found = ", ".join(p.name for p in candidates) or "none"
    raise CheckpointError(f"{run}: cannot tell the best checkpoint (summary.json names none; checkpoints: {found}); "
                          "pass the file with --ckpt_path.")


def eval_dir(base: Path, subcommand: str, now: float | None = None) -> tuple[Path, str]:
    """(`base/eval`, `<subcommand>-<timestamp>`): a new folder per evaluation, never an existing one."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    root = base / EVAL_DIR
    name, i = f"{subcommand}-{stamp}", 1
    while (root / name).exists():
        i += 1
        name = f"{subcommand}-{stamp}-{i}"
    return root, name
