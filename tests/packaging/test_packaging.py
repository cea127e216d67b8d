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


def test_class_paths_saved_by_earlier_runs_still_resolve() -> None:
    import pytest

    import medconv.data
    from medconv.callbacks import RunOutputs, RunSummary
    from medconv.mammo import MammoDataModule
    from medconv.wsi import WSITileDataModule

    with pytest.warns(FutureWarning, match="medconv.mammo.MammoDataModule"):
        assert medconv.data.MammoDataModule is MammoDataModule
    with pytest.warns(FutureWarning, match="medconv.wsi.WSITileDataModule"):
        assert medconv.data.WSITileDataModule is WSITileDataModule
    assert RunSummary is RunOutputs
