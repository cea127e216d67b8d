"""The model card (`README.md`): Hugging Face front matter, what the model is, what it saw, how well it did, what it
is not for, and how to load it. Everything comes from the run record, the checkpoint and the run's reports; no local
path is written (only file names), since the card is meant to be published.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medconv.export.hub_config import readable
from medconv.export.reports import CARD_METRICS, TestReport, metric_rows
from medconv.runs import Run

MODALITY_TAG = {"mammo": "mammography", "mammo_patch": "mammography", "wsi": "pathology"}
MODALITY_TEXT = {"mammo": "whole mammograms", "mammo_patch": "mammogram patches", "wsi": "whole-slide image tiles (H&E)"}


@dataclass
class CardInputs:
    """What the card says besides the run: its name, where it will live, the reports found."""

    name: str
    license: str
    hub_id: str | None
    architecture: str
    n_params: int
    num_features: int
    custom_architecture: bool  # registered with timm by `import medconv.models`
    checkpoint: dict[str, Any]  # file, sha256, epoch, global_step
    tests: list[TestReport]
    validation: dict[str, float]
    with_checkpoint: bool  # medconv.ckpt is in the folder


def model_card(run: Run, card: CardInputs) -> str:
    sections = [front_matter(run, card), f"# {card.name}\n", summary(run, card), details(run, card), training_data(run),
                evaluation(run, card), limitations(run), usage(run, card), source(card)]
    return "\n".join(sections)


def front_matter(run: Run, card: CardInputs) -> str:
    pipeline = "image-classification" if run.task == "classify" else "image-feature-extraction"
    tags = [pipeline, "timm", "medconv", MODALITY_TAG.get(run.modality, run.modality or "medical-imaging")]
    tags += ["self-supervised"] if run.task == "pretrain" else []
    lines = ["---", "library_name: timm", f"license: {card.license}", f"pipeline_tag: {pipeline}", "tags:"]
    return "\n".join([*lines, *(f"- {t}" for t in tags), "---", ""])


def summary(run: Run, card: CardInputs) -> str:
    data = MODALITY_TEXT.get(run.modality, run.modality or "images")
    if run.task == "pretrain":
        what = f"A `{card.architecture}` encoder pretrained without labels on {data} ({objective_name(run)})"
    else:
        what = f"A `{card.architecture}` classifier of {data} into {', '.join(f'`{c}`' for c in run.classes)}"
    rebuilt = "head included" if run.task == "classify" else "as a feature extractor"
    return f"{what}, trained with medconv and exported in timm's format: `timm.create_model` rebuilds it, {rebuilt}, " \
           "with its input size and normalisation.\n"


def objective_name(run: Run) -> str:
    objective = ((run.record.get("model") or {}).get("init_args") or {}).get("objective") or {}
    return str(objective.get("class_path", "self-supervised")).rsplit(".", 1)[-1]


def details(run: Run, card: CardInputs) -> str:
    c, h, w = run.in_chans, *run.image_size
    lines = ["## Model details", "",
             f"- **Architecture:** `{card.architecture}`, {card.n_params / 1e6:.2f}M parameters, {card.num_features} pooled features"
             + (" (a medconv architecture: `import medconv.models` registers it with timm)" if card.custom_architecture else ""),
             f"- **Input:** {plural(c, 'channel')}, {h} x {w} pixels (height x width), normalised with "
             f"mean {list(run.mean)} and std {list(run.std)}"]
    if run.task == "classify":
        lines.append(f"- **Output:** {len(run.classes)} logits, in the order of `label_names`: {', '.join(run.classes)}")
    else:
        objective = ((run.record.get("model") or {}).get("init_args") or {}).get("objective") or {}
        args = ", ".join(f"{k}={v}" for k, v in (objective.get("init_args") or {}).items())
        lines.append(f"- **Output:** pooled features ({card.num_features}); no classifier (`num_classes=0`)")
        lines.append(f"- **Objective:** `{objective_name(run)}`{f' ({args})' if args else ''}")
    lines.append(f"- **Training:** {plural(card.checkpoint.get('epochs', 0), 'epoch')}, "
                 f"{plural(card.checkpoint.get('global_step', 0), 'optimiser step')}")
    return "\n".join(lines) + "\n"


def data_source(run: Run) -> dict[str, Any]:
    """The init_args of the data the run saw (a pretraining datamodule's source, else the datamodule's own)."""
    args = run.data_args
    source = args.get("source")
    return dict(source.get("init_args") or {}) if isinstance(source, dict) else args


def training_data(run: Run) -> str:
    source = data_source(run)
    lines = ["## Training data", "", f"- **Modality:** {MODALITY_TAG.get(run.modality, run.modality)} "
             f"({MODALITY_TEXT.get(run.modality, run.modality)})"]
    if run.task == "classify":
        lines.append(f"- **Classes:** {', '.join(run.classes)}")
    manifest = source.get("manifest")
    demo = (source.get("demo") or {}).get("init_args") or {}
    if manifest:
        lines.append(f"- **Data:** the manifest `{Path(str(manifest)).name}`")
    elif demo:
        lines.append(f"- **Data:** medconv's synthetic demo set ({demo.get('n_patients', '?')} patients, seed "
                     f"{demo.get('seed', '?')}): generated images, not patients")
    split = [f"{k} {source[k]}" for k in ("val_fraction", "test_fraction", "label_fraction", "seed") if k in source]
    if split:
        lines.append(f"- **Split:** by patient; {', '.join(split)}")
    if run.task == "pretrain":
        lines.append("- **Images:** the train split only (validation and test patients unseen); labels unused")
    lines.append(f"- **Image size:** {run.image_size[0]} x {run.image_size[1]}, {plural(run.in_chans, 'channel')}")
    steps = [f"  - {key}: {readable(value)}" for key, value in run.preprocessing.items() if key not in ("feature_encoder", "feature_tiling")]
    if steps:
        lines += ["- **Preprocessing** (what inference must repeat):", *steps]
    return "\n".join(lines) + "\n"


def evaluation(run: Run, card: CardInputs) -> str:
    lines = ["## Evaluation", ""]
    if run.task == "pretrain":
        lines.append("Self-supervised: no labels were used. Evaluate the encoder by a linear probe or a fine-tune.")
        return "\n".join(lines) + "\n"
    header = ["| level | n | " + " | ".join(label for _, label in CARD_METRICS) + " |", "|---" * (2 + len(CARD_METRICS)) + "|"]
    if not card.tests:
        lines.append("This card has no test metrics: no `medconv test` report of this checkpoint was found beside it. "
                     "The figures below, if any, are validation figures.")
    for report in card.tests:
        where = f"the manifest `{Path(report.manifest).name}`" if report.manifest else "the run's held-out test split"
        boot = report.bootstrap
        ci = f"{boot.get('resamples', '?')} bootstrap resamples" if boot else "bootstrap"
        lines += [f"Test on {where} (`medconv test`); 95% intervals from {ci}:", "", *header]
        lines += ["| " + " | ".join(row) + " |" for row in metric_rows(report.metrics)]
        lines.append("")
    if card.validation:
        lines += ["Best validation epoch (chosen on these figures, so they are optimistic):", "", *header]
        lines += ["| " + " | ".join(row) + " |" for row in metric_rows(card.validation)]
    return "\n".join(lines) + "\n"


def limitations(run: Run) -> str:
    lines = ["## Intended use and limitations", "",
             "- For research on medical image classification. It is not a medical device and was not validated for "
             "clinical use: do not use it to diagnose or to decide treatment.",
             "- It expects inputs prepared as in training (see Preprocessing). timm's transform resizes to the input "
             "size and normalises; " + ("for whole mammograms that is not enough: crop the breast, put the chest wall "
                                        "on the left and pad to the aspect ratio first, as `medconv infer` does."
                                        if run.modality == "mammo" else
                                        "slide tiles must be read at the recorded resolution (target_mpp) and tile size."
                                        if run.modality == "wsi" else "repeat the recorded steps before it."),
             "- Performance on other scanners, vendors, stains, sites and populations is unknown; small test sets give "
             "wide intervals."]
    source = data_source(run)
    if source and not source.get("manifest"):
        lines.append("- Trained on synthetic demo data: the weights show that the pipeline works; on real images their "
                     "outputs mean nothing.")
    return "\n".join(lines) + "\n"


def usage(run: Run, card: CardInputs) -> str:
    name = f"hf-hub:{card.hub_id}" if card.hub_id else f"local-dir:{card.name}"
    other = f"local-dir:{card.name}" if card.hub_id else "hf-hub:ORG/NAME"
    mode = "L" if run.in_chans == 1 else "RGB"
    code = ["```python", "import timm", "import torch", "from PIL import Image"]
    code += [f"import medconv.models  # registers {card.architecture} with timm"] if card.custom_architecture else []
    code += ["", f'model = timm.create_model("{name}", pretrained=True).eval()  # or "{other}"',
             "config = timm.data.resolve_data_config({}, model=model)  # input size, mean, std of the training run",
             "transform = timm.data.create_transform(**config)",
             f'x = transform(Image.open("image.png").convert("{mode}")).unsqueeze(0)', "with torch.no_grad():"]
    if run.task == "classify":
        code += ["    probs = model(x).softmax(-1)", 'print(dict(zip(model.pretrained_cfg["label_names"], probs[0].tolist())))']
    else:
        code += [f"    features = model(x)  # (1, {card.num_features})",
                 f'# fine-tune: timm.create_model("{name}", pretrained=True, num_classes=2)']
    lines = ["## How to use", "", *code, "```", ""]
    if run.task == "classify":
        ckpt = ("medconv.ckpt", "(in this folder)") if card.with_checkpoint else \
            ("CHECKPOINT", f"with the training checkpoint (`{card.checkpoint.get('file')}`, not in this folder)")
        lines.append(f"With medconv, `medconv infer {ckpt[0]} INPUT... --out OUT` {ckpt[1]} repeats the preprocessing "
                     "exactly (slides tiled at the recorded resolution; mammograms cropped, flipped and padded).")
    lines.append(f"Fine-tune from these weights with medconv: `--model.init_args.backbone.init_args.name {card.architecture} "
                 "--model.init_args.backbone.init_args.pretrained_path model.safetensors`.")
    return "\n".join(lines) + "\n"


def source(card: CardInputs) -> str:
    ckpt = card.checkpoint
    return "\n".join(["## Source", "", f"- Checkpoint `{ckpt.get('file')}` (sha256 `{ckpt.get('sha256')}`), epoch "
                      f"{ckpt.get('epoch')}, step {ckpt.get('global_step')}", f"- Exported by `medconv export` "
                      f"(medconv {ckpt.get('medconv_version', '')}) on {ckpt.get('exported', '')}"]) + "\n"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
