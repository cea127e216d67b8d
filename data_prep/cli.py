"""`medconv prepare <dataset>`: turn a public dataset's published layout into a medconv manifest."""

from __future__ import annotations

from medconv.cli import dispatch

ADAPTERS = {
    "cbis-ddsm": ("medconv.data_prep.cbis_ddsm", "CBIS-DDSM description CSVs + DICOM tree -> mammogram manifest."),
    "vindr-mammo": ("medconv.data_prep.vindr_mammo", "VinDr-Mammo breast/finding annotation CSVs -> mammogram manifest."),
    "mini-mias": ("medconv.data_prep.mini_mias", "mini-MIAS Info.txt + PGM films -> mammogram manifest (patient pairs, boxes)."),
    "camelyon16": ("medconv.data_prep.camelyon16", "CAMELYON16 slides + XML annotations -> slide manifest."),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, ADAPTERS, prog="medconv prepare")
