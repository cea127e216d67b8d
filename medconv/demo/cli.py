"""`medconv demo-data <kind>`: synthetic data with a real, learnable signal.

Each kind takes `--difficulty`: `easy` (the default) is the standard set, on which small models reach AUROC ~1.0;
`hard` weakens the signal (medconv.demo.difficulty) to leave room for scarce-label experiments; slides also have
`subtle`, calibrated so that the CPU ablation sweep's ConvNeXt-atto with all labels reaches tile AUROC ~0.85-0.95 (docs/data.md).
"""

from __future__ import annotations

from medconv.commands import dispatch

KINDS = {
    "mammo": ("medconv.demo.mammo", "Screening-like mammogram exams (DICOM + 16-bit PNG), lesions, manifest; --difficulty easy|hard."),
    "wsi": ("medconv.demo.wsi", "Pyramidal tiled JPEG TIFF slides with MPP, tumour regions, masks and a manifest; --difficulty easy|hard|subtle."),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, KINDS, prog="medconv demo-data")
