"""`medconv demo-data <kind>`: synthetic data with a real, learnable signal."""

from __future__ import annotations

from medconv.cli import dispatch

KINDS = {
    "mammo": ("medconv.demo.mammo", "Screening-like mammogram exams (DICOM + 16-bit PNG) with lesions and a manifest."),
    "wsi": ("medconv.demo.wsi", "Pyramidal tiled JPEG TIFF slides with MPP, tumour regions, masks and a manifest."),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, KINDS, prog="medconv demo-data")
