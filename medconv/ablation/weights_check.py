"""Which weights each arm of a sweep starts from, and whether they are on this machine: checked before a sweep starts.

A `pretrained` init without a file loads each backbone's timm weights (timm_name + pretrained_tag) through timm's
hub loading; a `pretrained` or `ssl_export` init with a file loads that file. `medconv ablate --dry-run` lists them
and fails when any is missing; a sweep (local or SLURM) refuses to start while any is: a file that does not exist,
or hub weights that are not in the Hugging Face cache in offline mode. With network, weights not cached yet are
fetched once before the first run, so a gated or unknown repository stops the sweep before it starts, not each run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medconv.ablation.commands import weights_name, weights_path
from medconv.ablation.sweep import Sweep
from medconv.errors import PretrainedWeightsError
from medconv.models import hub


@dataclass(frozen=True)
class Need:
    """The weights the runs of one (backbone, init) arm start from."""

    backbone: str
    init: str
    location: hub.Location

    @property
    def hub(self) -> bool:
        return self.location.source in ("hf-hub", "url")

    def missing(self, offline: bool) -> bool:
        """Absent, and not to be had: a file that is not there, or hub weights not cached while offline."""
        return not self.location.present and (offline or not self.hub)


def needs(sweep: Sweep) -> list[Need]:
    """One row per (backbone, init) that loads weights (a `pretrain` init makes its own, so it has none)."""
    rows = []
    for backbone in sweep.backbones:
        for init in sweep.inits:
            name = weights_name(init, backbone)
            if name is not None:
                rows.append(Need(backbone.name, init.name, hub.locate(name)))
            elif init.kind in ("pretrained", "ssl_export") and init.path:
                path = weights_path(init, backbone)
                rows.append(Need(backbone.name, init.name, hub.Location(path, "file", path, Path(path).is_file(), path)))
    return rows


def report(rows: list[Need], offline: bool) -> list[str]:
    """What each arm will load and whether it is here, one line per arm."""
    lines = []
    for row in rows:
        where = row.location
        if where.present:
            state = f"in the cache: {where.path}" if row.hub else "file exists"
        elif row.hub:
            state = f"NOT in the cache {where.cache}" + (" (offline: missing)" if offline else " (fetched before the sweep starts)")
        else:
            state = "NOT found (missing)"
        lines.append(f"{row.backbone} x {row.init}: {where.name} ({where.source} {where.where}) {state}")
    return lines


def check(sweep: Sweep, say: Callable[[str], None] = print, fetch: bool = True) -> None:
    """List the sweep's weights; raise if any is missing; with `fetch`, download hub weights that are not cached."""
    rows = needs(sweep)
    offline = hub.offline()
    if rows:
        say(f"weights (Hugging Face cache {rows[0].location.cache or '-'}; HF_HUB_OFFLINE={int(offline)}):")
        for line in report(rows, offline):
            say(f"  {line}")
    missing = [row for row in rows if row.missing(offline)]
    if missing:
        items = "; ".join(f"{row.backbone} x {row.init}: {row.location.where}" for row in missing)
        repos = " ".join(sorted({row.location.where for row in missing if row.location.source == "hf-hub"}))
        fixes = [f"pre-download the hub weights where there is network (`hf download REPO`, or `huggingface-cli download "
                 f"REPO`, for each of {repos}; a gated one needs its licence accepted and `hf auth login` first) into this "
                 "cache, or set HF_HUB_OFFLINE=0 to let the sweep fetch them"] if repos else []
        if any(not row.hub for row in missing):
            fixes.append("give the files' right paths in the sweep file (relative to it)")
        raise PretrainedWeightsError(f"sweep {sweep.name}: weights missing, so no run starts: {items}. To fix: "
                                     f"{'; '.join(fixes)}.")
    if fetch:
        for row in rows:
            if row.hub and not row.location.present:
                say(f"  fetching {row.location.name} ({row.location.where}) once, before the first run")
                hub.load_pretrained(row.location.name)
