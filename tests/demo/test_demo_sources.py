"""Demo data is one `demo` object injected into a datamodule (medconv.demo.MammoDemo / SlideDemo / MILDemo). The
`demo_*` init args of earlier configs still work, with a FutureWarning, and give the same data in the same place;
no production module imports medconv.demo."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medconv.demo import MammoDemo, MILDemo, SlideDemo
from medconv.lightning_cli import run_lightning

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
SAVED = Path(__file__).parent / "saved_configs"  # config.yaml files written by runs before the demo object
TINY_MAMMO = {"n_patients": 2, "seed": 3, "image_size": (128, 100), "lesion_contrast": (0.5, 0.9)}


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _data(section: dict):
    """The datamodule of a config's `data` section, instantiated as LightningCLI does (subclass mode)."""
    from jsonargparse import ArgumentParser
    from lightning import LightningDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": section})).data


def _printed(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        run_lightning(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_old_mammo_keys_warn_and_make_the_same_files(tmp_path: Path) -> None:
    from medconv.demo.mammo import demo_manifest
    from medconv.mammo import MammoDataModule, MammoPatchDataModule

    old = {"demo_patients": 2, "demo_seed": 3, "demo_image_size": (128, 100), "demo_lesion_contrast": (0.5, 0.9)}
    with pytest.warns(FutureWarning, match=r"demo_dir -> demo.init_args.root, demo_patients -> demo.init_args.n_patients"):
        dm = MammoDataModule(demo_dir=str(tmp_path / "old"), **old)
    with pytest.warns(FutureWarning, match=r"demo_image_size -> demo.init_args.image_size"):
        patches = MammoPatchDataModule(demo_dir=str(tmp_path / "old"), **old)
    assert dm.demo == patches.demo == MammoDemo(root=str(tmp_path / "old"), **TINY_MAMMO)
    assert dm.manifest_path() == tmp_path / "old" / "manifest.csv" == patches.manifest_path()
    new = MammoDataModule(demo=MammoDemo(root=str(tmp_path / "new"), **TINY_MAMMO)).manifest_path()
    # what the datamodule called before the demo object, with the same arguments
    before = demo_manifest(tmp_path / "before", 2, 3, (128, 100), (0.5, 0.9), "easy")
    assert _files(tmp_path / "old") == _files(new.parent) == _files(before.parent)
    assert len(_files(before.parent)) > 8  # 2 patients x 4 images, masks, manifest


def test_an_old_key_on_top_of_a_demo_object_changes_that_field_only() -> None:
    from medconv.mammo import MammoDataModule

    with pytest.warns(FutureWarning, match="demo_dir -> demo.init_args.root"):  # e.g. --data.init_args.demo_dir on the CLI
        dm = MammoDataModule(demo=MammoDemo(n_patients=64, lesion_contrast=(0.5, 0.9)), demo_dir="elsewhere")
    assert dm.demo == MammoDemo(root="elsewhere", n_patients=64, lesion_contrast=(0.5, 0.9))


def test_old_wsi_keys_warn_and_tile_into_the_same_place(tmp_path: Path) -> None:
    from medconv.wsi import WSITileDataModule

    geometry = {"tile_size": 64, "target_mpp": 1.0, "num_workers": 0}
    with pytest.warns(FutureWarning, match=r"demo_slides -> demo.init_args.n_slides.*demo_slide_size -> demo.init_args.slide_size"):
        old = WSITileDataModule(demo_dir=str(tmp_path / "demo_wsi"), demo_slides=2, demo_slide_size=(768, 512), **geometry)
    demo = SlideDemo(root=str(tmp_path / "demo_wsi"), n_slides=2, slide_size=(768, 512))
    assert old.demo == demo
    table = WSITileDataModule(demo=demo, **geometry).load_table()
    # slides and coords stores where the datamodule kept them before the demo object
    assert [Path(p).relative_to(tmp_path) for p in table["coords_path"]] == [
        Path("demo_wsi/coords_64px_1mpp/demo_000.h5"), Path("demo_wsi/coords_64px_1mpp/demo_001.h5")]
    assert sorted(p.name for p in (tmp_path / "demo_wsi" / "slides").iterdir()) == ["demo_000.tif", "demo_001.tif"]
    assert list(table["label"]) == ["normal", "tumor"]
    assert (old.load_table()["coords_path"] == table["coords_path"]).all()


@pytest.mark.parametrize(("saved", "new"), [
    ("mammo_quickstart.yaml", ["mammo_convnext.yaml", "quickstart_cpu.yaml"]),
    ("tiny_wsi.yaml", ["wsi_convnext.yaml", "tests/tiny_wsi.yaml"]),
    ("wsi_abmil.yaml", ["wsi_abmil.yaml"]),
])
def test_a_config_saved_before_the_demo_object_loads_and_names_the_same_demo(
    saved: str, new: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    old = yaml.safe_load((SAVED / saved).read_text())
    with pytest.warns(FutureWarning, match="docs/migration.md"):
        before = _data(old["data"])
    stack = [arg for rel in new for arg in ("--config", str(CONFIGS / rel))]
    now = _data(_printed(stack, capsys)["data"])
    assert before.demo == now.demo  # same class and fields: the same files in the same folder
    assert type(now.demo) in (MammoDemo, SlideDemo, MILDemo)
    if saved == "mammo_quickstart.yaml":  # the whole saved file still parses as a `medconv fit` config
        assert _printed(["--config", str(SAVED / saved)], capsys)["data"]["init_args"]["demo_patients"] == 120
        assert now.demo == MammoDemo(image_size=(512, 400))  # the quick start's set: medconv_data/demo_mammo, as before


def test_without_manifest_or_demo_the_default_set_is_used() -> None:
    from medconv.mammo import MammoDataModule
    from medconv.mil import MILDataModule
    from medconv.wsi import WSITileDataModule

    assert MammoDataModule().demo == MammoDemo(root="medconv_data/demo_mammo")
    assert WSITileDataModule().demo == SlideDemo(root="medconv_data/demo_wsi")
    assert MILDataModule().demo == MILDemo(root="medconv_data/demo_wsi_mil")
    assert MammoDataModule(manifest="m.csv").demo is None


def test_a_run_on_a_manifest_never_loads_the_generators() -> None:
    """medconv.demo is a leaf: datamodules get a demo object from the config and import nothing of it (static imports
    are checked by tests/packaging/test_package_graph.py; this checks what is loaded at run time)."""
    code = ("import sys; from medconv.mammo import MammoDataModule, MammoPatchDataModule; from medconv.mil import MILDataModule; "
            "from medconv.wsi import WSITileDataModule; [c(manifest='m.csv') for c in (MammoDataModule, MammoPatchDataModule, "
            "WSITileDataModule, MILDataModule)]; print(sorted(m for m in sys.modules if m.startswith('medconv.demo')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
