"""Difficulty presets for the demo generators: `easy` (the original sets, byte for byte under the same library
versions), `hard` and, for slides, `subtle`.

Why: on `easy` a small model from random init reaches AUROC ~1.0 with all labels, which leaves no room to show what
self-supervised pretraining adds when labels are scarce. `hard` keeps the same signal (a lesion, a tumour region)
but weakens it: smaller, fainter lesions in busier breast texture; tumour whose nuclei and colour sit closer to
normal tissue, under stronger stain variation between and within slides. Each preset is a frozen dataclass whose
`easy` values are the literals the generators used before presets existed, so `easy` reproduces the old data
(OpenCV 5 renders the slide texture slightly differently from 4.x: the same code, not the same bytes).

`hard` slides still proved too easy (a resnet18d from random init reaches test tile AUROC ~0.999 at 5% labels), so
slides have a third preset, `subtle`, calibrated on the validation split so that the reference CNN with all labels
lands at tile AUROC ~0.85-0.95 (docs/data.md, "Difficulty presets"). Mammograms have no `subtle` preset: `hard`
mammograms are already near chance at 5% labels; asking for one is a ConfigError.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from medconv.errors import ConfigError

DIFFICULTIES = ("easy", "hard", "subtle")  # every name; a modality offers those in its *_PRESETS


@dataclass(frozen=True)
class MammoPreset:
    lesion_size: float = 1.0  # multiplies the drawn lesion diameter (mass 8-25 mm, calcification cluster 8-15 mm)
    lesion_contrast: float = 1.0  # multiplies the drawn contrast (a fraction of the breast's intensity range)
    cloud_amplitude: float = 0.1  # brightness of fibroglandular clouds (1/f^3 texture) over fatty tissue
    fine_texture: float = 0.012  # amplitude of the fine 1/f^2 texture (quantum noise, small structures)


@dataclass(frozen=True)
class WSIPreset:
    tumour_background: tuple[int, int, int] = (196, 128, 186)  # tumour stroma RGB (normal: 234, 168, 198)
    tumour_density: float = 1 / 260  # nuclei per pixel (normal: 1/1400)
    tumour_axes: tuple[tuple[float, float], tuple[float, float]] = ((7, 12), (8, 15))  # semi-axes px (normal (3-4.5, 6-10))
    tumour_colour: tuple[int, int, int] = (72, 36, 112)  # nucleus RGB (normal: 112, 72, 152)
    tumour_jitter: int = 22
    stain_jitter: float = 0.0  # per-slide, per-channel optical-density scale drawn from 1 +- this
    stain_drift: float = 0.0  # smooth within-slide optical-density variation (relative amplitude)


MAMMO_PRESETS = {
    "easy": MammoPreset(),
    "hard": MammoPreset(lesion_size=0.9, lesion_contrast=0.75, cloud_amplitude=0.12, fine_texture=0.016),
}
WSI_PRESETS = {
    "easy": WSIPreset(),
    "hard": WSIPreset(
        tumour_background=(224, 156, 195), tumour_density=1 / 700, tumour_axes=((4, 6.5), (7, 11)),
        tumour_colour=(98, 60, 140), tumour_jitter=18, stain_jitter=0.2, stain_drift=0.12,
    ),
    # tumour 0.35 of the way from normal tissue to `hard` (t in docs/data.md's calibration), hard's stain variation.
    # Calibrated on the CPU ablation sweep itself (configs/ablation/wsi_cpu.yaml: ConvNeXt-atto from random init,
    # all labels, 64 px at 1 um/px, 240 steps), validation split only: val tile AUROC 0.885/0.875/0.909 (seeds 0-2).
    # The first calibration (t = 0.2, on resnet18d at 96 px for 12 epochs) left that sweep's ConvNeXt at val 0.76.
    "subtle": WSIPreset(
        tumour_background=(230, 164, 197), tumour_density=1.35 / 1400, tumour_axes=((3.35, 5.2), (6.35, 10.35)),
        tumour_colour=(107, 68, 148), tumour_jitter=15, stain_jitter=0.2, stain_drift=0.12,
    ),
}


def check_difficulty(difficulty: str, presets: dict | None = None) -> str:
    """`difficulty` when it names a preset (of `presets`, one modality's, when given), else a ConfigError that
    lists them."""
    names = list(DIFFICULTIES if presets is None else presets)
    if difficulty not in names:
        which = "" if presets is None else f" for {'mammograms' if presets is MAMMO_PRESETS else 'slides'}"
        raise ConfigError(f"demo difficulty{which} must be one of {names}, not {difficulty!r}"
                          + (" (subtle is a slide preset: hard mammograms are already near chance at 5% labels)"
                             if presets is MAMMO_PRESETS and difficulty == "subtle" else ""))
    return difficulty


def demo_root(demo_dir: str | Path, difficulty: str) -> Path:
    """Where a datamodule keeps its demo set: `demo_dir` for easy (the folder earlier runs cached), a sibling
    `<demo_dir>_<difficulty>` otherwise, so sets (and their tiles and prepared-image caches) never mix."""
    check_difficulty(difficulty)
    root = Path(demo_dir)
    return root if difficulty == "easy" else root.with_name(f"{root.name}_{difficulty}")


def preset_params(preset: MammoPreset | WSIPreset) -> dict:
    """The preset as the JSON a demo set's parameter file stores (tuples as lists), so a set generated with a
    retuned preset no longer matches and is regenerated rather than reused."""
    return json.loads(json.dumps(asdict(preset)))
