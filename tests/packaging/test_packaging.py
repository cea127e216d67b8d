"""What `pip install` puts into site-packages: medconv's subpackages, and no generic top-level module."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_installed_and_data_prep_lives_under_medconv() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "medconv").rglob("__init__.py")}
    assert on_disk - declared == set(), "add these subpackages to [tool.setuptools] packages in pyproject.toml"
    assert all(name == "medconv" or name.startswith("medconv.") for name in declared)
    assert setuptools["package-dir"] == {"medconv.data_prep": "data_prep"}


def test_adapters_import_as_medconv_data_prep() -> None:
    from medconv.data_prep import camelyon16, cbis_ddsm, vindr_mammo

    assert all(m.__name__.startswith("medconv.data_prep.") for m in (camelyon16, cbis_ddsm, vindr_mammo))
