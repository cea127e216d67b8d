"""A sweep file, read and expanded into runs: pure parsing and validation, no training.

A sweep is the product backbones x inits x fractions x seeds over one base config stack. Every run trains the same
number of optimisation steps (`steps`), whatever its label fraction, so an arm that sees fewer labels is not also
given less compute; the patient split is drawn by one `split_seed` for every run (and for every pretraining run),
so the test patients never change and pretraining never sees them. With `folds: k` every run (pretraining included)
is repeated on folds 0..k-1 of a patient-level k-fold split: each fold's test patients are its own, and every
patient is tested once over the folds. docs/ablation.md documents the format.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medconv.errors import ConfigError

FAMILIES = ("cnn", "vit")
INIT_KINDS = ("random", "pretrained", "ssl_export", "pretrain")
TOP_KEYS = {"name", "configs", "backbones", "inits", "fractions", "seeds", "split_seed", "steps", "val_every_steps",
            "pretrain_seed", "overrides", "pretrain_overrides", "metric", "folds"}
BACKBONE_KEYS = {"name", "family", "timm_name", "configs", "pretrain_configs", "model_args", "pretrained_tag"}
_ID = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclass(frozen=True)
class Backbone:
    name: str  # the run id's tag (and the timm name unless `timm_name` or the backbone's configs say otherwise)
    family: str  # cnn | vit: the arm of the CNN-vs-ViT comparison
    timm_name: str | None = None
    configs: tuple[str, ...] = ()
    pretrain_configs: tuple[str, ...] = ()
    model_args: dict | None = None
    pretrained_tag: str | None = None  # a `pretrained` init without a file: the timm tag it loads (fb_in1k, ...)


@dataclass(frozen=True)
class Init:
    name: str  # the run id's tag
    kind: str  # random | pretrained | ssl_export | pretrain
    path: str | None = None  # pretrained / ssl_export: the weights file; `{backbone}` is replaced by the backbone's name
    # (a `pretrained` init without a path loads each backbone's timm weights: its timm_name + pretrained_tag)
    configs: tuple[str, ...] = ()  # pretrain: the pretraining config stack (the backbone name is overridden)
    steps: int | None = None  # pretrain: optimisation steps of the pretraining run (None: the configs' epochs)
    # pretrain: "ssl" (its encoder.safetensors initialises) or "supervised" (e.g. a lesion-patch classifier first, the
    # patch-to-image recipe: its best checkpoint's backbone initialises the fine-tune)
    objective: str = "ssl"


@dataclass(frozen=True)
class Sweep:
    name: str
    configs: tuple[str, ...]
    backbones: tuple[Backbone, ...]
    inits: tuple[Init, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    split_seed: int
    steps: int
    val_every_steps: int
    pretrain_seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = "auroc"
    folds: int | None = None  # k of patient-level k-fold cross-validation; None: one fixed split


@dataclass(frozen=True)
class PretrainRun:
    """One pretraining run per (backbone, `pretrain` init[, fold]), shared by every seed and fraction that fine-tunes it."""

    run_id: str
    backbone: Backbone
    init: Init
    fold: int | None = None  # with folds, pretraining sees only this fold's training patients


@dataclass(frozen=True)
class Run:
    run_id: str
    backbone: Backbone
    init: Init
    fraction: float
    seed: int
    pretrain_id: str | None = None  # the PretrainRun whose encoder this run starts from
    fold: int | None = None  # the test fold (None: the sweep has no folds)


def _fold_tag(fold: int | None) -> str:
    return "" if fold is None else f"-fold{fold}"  # not `f{k}`: `f` already tags the label fraction


def run_id(backbone: str, init: str, fraction: float, seed: int, fold: int | None = None) -> str:
    """`convnext_atto-random-f0.05-s1` (`...-s1-fold2` with folds): readable, unique within a sweep, a safe file name."""
    return f"{backbone}-{init}-f{fraction:g}-s{seed}{_fold_tag(fold)}"


def pretrain_id(backbone: str, init: str, fold: int | None = None) -> str:
    return f"pretrain-{backbone}-{init}{_fold_tag(fold)}"


def folds(sweep: Sweep) -> list[int | None]:
    """The test folds a run is repeated on: 0..k-1, or [None] without folds."""
    return list(range(sweep.folds)) if sweep.folds else [None]


def expand(sweep: Sweep) -> list[Run]:
    """Every fine-tune of the sweep, sorted by run id (the order shards slice)."""
    runs = [Run(run_id(b.name, i.name, f, s, k), b, i, f, s, pretrain_id(b.name, i.name, k) if i.kind == "pretrain" else None, k)
            for b in sweep.backbones for i in sweep.inits for f in sweep.fractions for s in sweep.seeds for k in folds(sweep)
            # A supervised first stage is shared by every fraction and reads every training patient's annotations:
            # below 1.0 its arm would see labels the fraction withholds, so that arm runs at 1.0 only.
            if i.objective != "supervised" or f == 1.0]
    return sorted(runs, key=lambda r: r.run_id)


def pretrain_runs(sweep: Sweep) -> list[PretrainRun]:
    runs = [PretrainRun(pretrain_id(b.name, i.name, k), b, i, k)
            for b in sweep.backbones for i in sweep.inits if i.kind == "pretrain" for k in folds(sweep)]
    return sorted(runs, key=lambda r: r.run_id)


def shard(items: list, index: int, count: int) -> list:
    """The `index`-th of `count` deterministic slices (`items[index::count]`); together they cover every item once."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {index}/{count}: need 0 <= i < n (e.g. --shard 0/4 ... --shard 3/4)")
    return items[index::count]


def parse_shard(text: str) -> tuple[int, int]:
    """`"2/5"` -> (2, 5)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: write it as i/n, e.g. 0/4") from None
    shard([], index, count)  # validates
    return index, count


# --- reading a sweep file -------------------------------------------------------------------------
def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file; config paths in it are relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    try:
        return parse_sweep(raw, path.parent, default_name=path.stem)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def parse_sweep(raw: Any, base_dir: Path, default_name: str = "sweep") -> Sweep:
    if not isinstance(raw, dict):
        raise ConfigError("a sweep file is a mapping with keys " + ", ".join(sorted(TOP_KEYS)))
    _no_unknown(raw, TOP_KEYS, "sweep")
    for key in ("configs", "backbones", "inits", "fractions", "seeds", "split_seed", "steps"):
        if key not in raw:
            raise ConfigError(f"missing key {key!r} (see docs/ablation.md for the format)")
    backbones = tuple(_backbone(b, base_dir) for b in _list(raw["backbones"], "backbones"))
    inits = tuple(_init(name, spec, base_dir) for name, spec in _inits(raw["inits"]))
    fractions = tuple(_fraction(f) for f in _list(raw["fractions"], "fractions"))
    seeds = tuple(_int(s, "seeds") for s in _list(raw["seeds"], "seeds"))
    steps = _int(raw["steps"], "steps", minimum=1)
    sweep = Sweep(
        name=str(raw.get("name", default_name)),
        configs=tuple(_paths(raw["configs"], base_dir, "configs")),
        backbones=backbones, inits=inits, fractions=fractions, seeds=seeds,
        split_seed=_int(raw["split_seed"], "split_seed"),
        steps=steps,
        val_every_steps=_int(raw.get("val_every_steps", steps), "val_every_steps", minimum=1),
        pretrain_seed=_int(raw.get("pretrain_seed", 0), "pretrain_seed"),
        overrides=_overrides(raw.get("overrides"), "overrides"),
        pretrain_overrides=_overrides(raw.get("pretrain_overrides"), "pretrain_overrides"),
        metric=str(raw.get("metric", "auroc")),
        folds=None if raw.get("folds") is None else _int(raw["folds"], "folds", minimum=2),
    )
    for label, values in (("backbone names", [b.name for b in backbones]), ("init names", [i.name for i in inits]),
                          ("fractions", fractions), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{label} repeat: {list(values)}")
    if not sweep.configs:
        raise ConfigError("configs: give at least one base config (e.g. ../wsi_convnext.yaml)")
    return sweep


def _no_unknown(raw: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


def _list(value: Any, key: str) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: give a non-empty list, not {value!r}")
    return value


def _int(value: Any, key: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{key}: expected an integer{bound}, not {value!r}")
    return value


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1 or math.isnan(value):
        raise ConfigError(f"fractions: each must be a number in (0, 1], not {value!r}")
    return float(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ConfigError(f"{where}: name {value!r} must be letters, digits, '_' or '.' (it becomes part of file names)")
    return value


def _paths(value: Any, base_dir: Path, key: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{key}: give a config file or a list of them, not {value!r}")
    out = []
    for v in values:
        path = Path(v).expanduser()
        path = path if path.is_absolute() else (base_dir / path)
        if not path.is_file():
            raise ConfigError(f"{key}: config {v} not found (looked for {path}; paths are relative to the sweep file)")
        out.append(str(path.resolve()))
    return out


def _overrides(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ConfigError(f"{key}: give a mapping of dotted config keys to values (trainer.accelerator: cpu), not {value!r}")
    return dict(value)


def _backbone(raw: Any, base_dir: Path) -> Backbone:
    if not isinstance(raw, dict):
        raise ConfigError(f"backbones: each entry is a mapping with name and family, not {raw!r}")
    _no_unknown(raw, BACKBONE_KEYS, f"backbone {raw.get('name', '?')}")
    name = _name(raw.get("name"), "backbones")
    family = raw.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"backbone {name}: family must be one of {list(FAMILIES)}, not {family!r}")
    configs = tuple(_paths(raw.get("configs", []), base_dir, f"backbone {name} configs"))
    timm_name = raw.get("timm_name") or (None if configs else name)
    model_args = raw.get("model_args")
    if model_args is not None and not isinstance(model_args, dict):
        raise ConfigError(f"backbone {name}: model_args must be a mapping, not {model_args!r}")
    tag = raw.get("pretrained_tag")
    if tag is not None and (not isinstance(tag, str) or not tag or "." in tag or ":" in tag):
        raise ConfigError(f"backbone {name}: pretrained_tag is a timm tag such as fb_in1k (the part after the dot of "
                          f"convnext_tiny.fb_in1k), not {tag!r}")
    if tag is not None and not timm_name:
        raise ConfigError(f"backbone {name}: pretrained_tag needs the backbone's timm_name to append it to")
    return Backbone(name, family, timm_name, configs, tuple(_paths(raw.get("pretrain_configs", []), base_dir,
                    f"backbone {name} pretrain_configs")), model_args, tag)


def _inits(raw: Any) -> list[tuple[str, Any]]:
    """`inits` as a mapping (name: spec) or a list of names/one-key mappings."""
    if isinstance(raw, dict) and raw:
        return list(raw.items())
    if isinstance(raw, list) and raw:
        out = []
        for item in raw:
            if isinstance(item, str):
                out.append((item, item))
            elif isinstance(item, dict) and len(item) == 1:
                out.extend(item.items())
            else:
                raise ConfigError(f"inits: each entry is a name (random) or one `name: spec` mapping, not {item!r}")
        return out
    raise ConfigError(f"inits: give a mapping of init names to specs (random: random), not {raw!r}")


def _init(name: Any, spec: Any, base_dir: Path) -> Init:
    name = _name(name, "inits")
    if spec in (None, "random") or spec == {"random": None}:
        return Init(name, "random")
    if spec == "pretrained":  # each backbone's own timm weights (timm_name + pretrained_tag), not a file
        return Init(name, "pretrained")
    if isinstance(spec, str) and spec in INIT_KINDS:
        raise ConfigError(f"init {name}: {spec} needs a value, e.g. `{name}: {{{spec}: ...}}`")
    if not isinstance(spec, dict):
        raise ConfigError(f"init {name}: give random, pretrained (each backbone's timm weights), or one of {{pretrained: FILE}}, {{ssl_export: FILE}}, "
                          f"{{pretrain: [CONFIGS]}}, not {spec!r}")
    _no_unknown(spec, {"pretrained", "ssl_export", "pretrain", "supervised", "steps"}, f"init {name}")
    if "supervised" in spec:  # a supervised first stage is a pretraining run whose best checkpoint initialises
        if "pretrain" in spec:
            raise ConfigError(f"init {name}: give pretrain (self-supervised) or supervised (a labelled first stage), "
                              "not both")
        spec = {**{k: v for k, v in spec.items() if k != "supervised"}, "pretrain": spec["supervised"],
                "objective": "supervised"}
    kinds = [k for k in ("pretrained", "ssl_export", "pretrain") if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"init {name}: give exactly one of pretrained, ssl_export, pretrain (got {kinds or 'none'})")
    kind = kinds[0]
    if kind == "pretrain":
        steps = spec.get("steps")
        return Init(name, kind, configs=tuple(_paths(spec["pretrain"], base_dir, f"init {name} pretrain")),
                    steps=None if steps is None else _int(steps, f"init {name} steps", minimum=1),
                    objective=spec.get("objective", "ssl"))
    if "steps" in spec:
        raise ConfigError(f"init {name}: steps applies to `pretrain` inits only")
    value = spec[kind]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"init {name}: {kind} must be a weights file path, not {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if "{backbone}" not in value and not path.is_file():
        raise ConfigError(f"init {name}: weights file {value} not found (looked for {path}; paths are relative to the "
                          "sweep file; `{backbone}` in the path is replaced by each backbone's name)")
    return Init(name, kind, path=str(path))
