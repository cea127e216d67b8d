"""`medconv validate | test | predict` on fitted runs of every kind (tiny configs, CPU).

- `--ckpt_path FILE` loads any checkpoint medconv wrote, as `best` / `last` do, and a pretraining run resumes from
  one; a file that is missing, not a checkpoint, or a checkpoint of another task is a one-line medconv error.
- The callbacks that write a run's files come from its config; a config whose own `trainer.callbacks` list leaves
  them out (a user's list, an older run's saved config.yaml) still gets the run's reports and predictions, with a
  warning that says so.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medconv.cli import main
from medconv.lightning_cli import RUN_CALLBACKS, run_lightning

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

SHORT = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
#: run kind -> (configs of its fit, extra fit flags, the subcommands evaluated with a checkpoint file)
KINDS = {
    "mammo": (["mammo_convnext.yaml", "quickstart_cpu.yaml", "tests/tiny_mammo.yaml"],
              ["--trainer.limit_train_batches", "2"], ("test", "validate", "predict")),
    "mammo_patches": (["mammo_patches_convnext.yaml", "tests/tiny_mammo_patches.yaml"],
                      ["--trainer.limit_train_batches", "2", "--data.init_args.num_workers", "0"], ("test", "validate", "predict")),
    "wsi": (["wsi_convnext.yaml", "tests/tiny_wsi.yaml"], [], ("validate", "predict")),  # no test split in tiny_wsi
    "mil": (["wsi_abmil.yaml", "tests/tiny_mil.yaml"], [], ("validate", "predict")),  # nor in tiny_mil
}
#: the folder each kind is fitted in: the whole-image and the patch recipes share one demo set (tiny_mammo_patches.yaml)
ROOTS = {"mammo_patches": "mammo"}
#: evaluation is what is tested, not the model: a few batches of the larger sets
EVAL_FLAGS = {kind: [f"--trainer.limit_{stage}_batches=3" for stage in ("val", "test", "predict")] for kind in ("mammo", "mammo_patches")}
#: what a user opens after each command
OUTPUTS = {"test": ["test_metrics.json", "test_predictions.csv"], "validate": ["val_metrics.json", "val_predictions.csv"],
           "predict": ["predictions.csv"]}
N_SLIDES = 12


def write_bags(root: Path, n_slides: int = N_SLIDES, dim: int = 8) -> Path:
    """Feature bags (CLAM/TRIDENT h5: features + coords) of n slides, odd ones `tumor` with shifted instances."""
    rng = np.random.default_rng(0)
    rows = []
    (root / "features").mkdir(parents=True, exist_ok=True)
    for i in range(n_slides):
        n = int(rng.integers(5, 12))
        features = rng.normal(size=(n, dim)).astype(np.float32)
        features[: 3 * (i % 2)] += 3.0
        with h5py.File(root / "features" / f"slide_{i:03d}.h5", "w") as f:
            f.create_dataset("features", data=features)
            f.create_dataset("coords", data=np.stack([np.arange(n) * 224, np.zeros(n)], axis=1).astype(np.int64))
        rows.append({"slide_path": f"slides/slide_{i:03d}.tif", "label": "tumor" if i % 2 else "normal", "patient_id": f"p{i:03d}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def fit_args(kind: str, root: Path) -> list[str]:
    configs, extra, _ = KINDS[kind]
    args = [a for c in configs for a in ("--config", str(CONFIGS / c))]
    if kind == "mil":
        manifest = write_bags(root / "bags")
        extra = [*extra, "--data.init_args.manifest", str(manifest), "--data.init_args.features_dir", str(root / "bags" / "features")]
    return ["fit", *args, *SHORT, *extra]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """kind -> (the folder it was fitted in: demo data and runs/ live there, the run directory); one fit per kind."""
    cache: dict[str, tuple[Path, Path]] = {}
    roots: dict[str, Path] = {}

    def get(kind: str) -> tuple[Path, Path]:
        if kind not in cache:
            name = ROOTS.get(kind, kind)
            root = roots.setdefault(name, tmp_path_factory.mktemp(name))
            with contextlib.chdir(root):
                cli = run_lightning(fit_args(kind, root))
            cache[kind] = root, (root / cli.trainer.log_dir).resolve()
        return cache[kind]

    return get


@pytest.fixture
def run(request: pytest.FixtureRequest, fitted: Callable[[str], tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """(kind, run directory), with the working directory set to where the run was fitted (its relative demo paths)."""
    kind = request.param
    if kind == "wsi":  # the session's tiny slide run (tests/conftest.py)
        run_dir = request.getfixturevalue("tiny_wsi_run")
        root = run_dir.parents[2]
    else:
        root, run_dir = fitted(kind)
    monkeypatch.chdir(root)
    return kind, run_dir


def _outputs(subcommand: str, out: Path, kind: str) -> None:
    for name in OUTPUTS[subcommand]:
        assert (out / name).is_file(), f"{subcommand}: no {name} in {out}"
    if subcommand == "predict" and kind == "mil":  # one row per slide, attention and coords per slide
        assert len(pd.read_csv(out / "predictions.csv")) == N_SLIDES
        assert len(list((out / "attention").glob("*.h5"))) == N_SLIDES


# --- checkpoints given by their path -----------------------------------------------------------------------------


@pytest.mark.parametrize("run", list(KINDS), indirect=True)
def test_eval_commands_load_a_checkpoint_given_by_its_path(run: tuple[str, Path]) -> None:
    kind, run_dir = run
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2, checkpoints  # best-epoch... and last
    before = {p: p.read_bytes() for p in [*checkpoints, run_dir / "config.yaml"]}
    for i, subcommand in enumerate(KINDS[kind][2]):
        ckpt = checkpoints[i % 2]
        cli = run_lightning([subcommand, "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(ckpt), *EVAL_FLAGS.get(kind, [])])
        out = Path(cli.trainer.log_dir).resolve()
        assert out.parent == run_dir / "eval", out
        _outputs(subcommand, out, kind)
        if subcommand != "predict":
            report = json.loads((out / OUTPUTS[subcommand][0]).read_text())
            assert Path(report["checkpoint"]).resolve() == ckpt.resolve()
    assert {p: p.read_bytes() for p in before} == before, "an evaluation changed the run's files"


def test_pretraining_resumes_from_a_checkpoint_given_by_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pretrain = ["--config", str(CONFIGS / "pretrain" / "mim_convnext.yaml"), "--config", str(CONFIGS / "tests" / "tiny_pretrain.yaml")]
    cli = run_lightning(["fit", *pretrain, *SHORT])
    run_dir = (tmp_path / cli.trainer.log_dir).resolve()
    cli = run_lightning(["fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                         "--trainer.max_epochs", "2"])
    assert (tmp_path / cli.trainer.log_dir).resolve() == run_dir  # the same run, continued
    assert json.loads((run_dir / "encoder.json").read_text())["epochs"] == 2


def _medconv_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The `medconv` command in this process: it must end with exit code 2 and one error line, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "medconv: error: " in err
    return err


def test_a_file_that_is_no_checkpoint_of_the_run_is_a_clear_error(
    tiny_wsi_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tiny_wsi_run.parents[2])
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    torch.save({"stem.weight": torch.zeros(2)}, tmp_path / "weights.pth")  # a plain state dict (timm-style weights)
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "medconv.tasks.PretrainModule"}}, tmp_path / "pretrain.ckpt")
    torch.save({"state_dict": {"head.1.weight": torch.zeros(5, 3)}, "pytorch-lightning_version": "2.6.0",
                "hyper_parameters": {"_class_path": "medconv.tasks.ClassificationModule"}}, tmp_path / "other.ckpt")
    cases = {
        "missing.ckpt": "checkpoint not found",
        "notes.ckpt": "not a checkpoint written by `medconv fit`",
        "weights.pth": "--model.init_args.backbone.init_args.pretrained_path",
        "pretrain.ckpt": "a checkpoint of medconv.tasks.PretrainModule, but the config builds medconv.tasks.ClassificationModule",
        "other.ckpt": "its weights do not fit the model that the config builds",
    }
    for name, expected in cases.items():
        err = _medconv_error(capsys, "validate", "--config", str(tiny_wsi_run / "config.yaml"), "--ckpt_path", str(tmp_path / name))
        assert expected in err and str(tmp_path / name) in err, err


# --- the callbacks that write a run's files ----------------------------------------------------------------------


def _recipe_callbacks(rel: str) -> tuple[str, list[str]]:
    """(model class_path, trainer callback class_paths) of a shipped experiment config, following `trainer: base/...`."""
    config = yaml.safe_load((CONFIGS / rel).read_text())
    trainer = config["trainer"]
    if isinstance(trainer, str):
        trainer = yaml.safe_load(((CONFIGS / rel).parent / trainer).read_text())
    return config["model"]["class_path"], [c["class_path"] for c in trainer["callbacks"]]


def _is_experiment(path: Path) -> bool:
    config = yaml.safe_load(path.read_text()) or {}
    return "trainer" in config and "class_path" in (config.get("model") or {})


EXPERIMENTS = sorted(str(p.relative_to(CONFIGS)) for p in [*CONFIGS.glob("*.yaml"), *CONFIGS.glob("pretrain/*.yaml")] if _is_experiment(p))


@pytest.mark.parametrize("rel", EXPERIMENTS)
def test_every_recipe_lists_the_callbacks_its_run_needs(rel: str) -> None:
    """Nothing is added behind a shipped recipe's back: its YAML names each callback its task's files come from."""
    from medconv.lightning_cli import _import, _subclass

    model, callbacks = _recipe_callbacks(rel)
    spec = next(v for k, v in RUN_CALLBACKS.items() if _subclass(_import(model), k))
    for need in spec.needs:
        assert any(_subclass(_import(c), need) for c in callbacks), f"configs/{rel}: no {need} in trainer.callbacks"
    for wrong in spec.replaces:
        assert wrong not in callbacks, f"configs/{rel}: {wrong} writes the wrong files for {model}"


def _edit_callbacks(config: Path, edit: Callable[[list[dict]], list[dict]]) -> None:
    content = yaml.safe_load(config.read_text())
    content["trainer"]["callbacks"] = edit(content["trainer"]["callbacks"])
    config.write_text(yaml.safe_dump(content, sort_keys=False))


def test_an_older_runs_config_without_the_output_callbacks_still_gives_reports_and_predictions(
    tiny_wsi_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config.yaml saved before the callbacks were listed in the recipes: `medconv validate | predict` with it still
    write their report and predictions (the callbacks are put back, with a warning)."""
    monkeypatch.chdir(tiny_wsi_run.parents[2])
    old = tmp_path / "runs" / "old" / "version_0"
    shutil.copytree(tiny_wsi_run, old, ignore=shutil.ignore_patterns("eval"))
    _edit_callbacks(old / "config.yaml", lambda cbs: [c for c in cbs if not c["class_path"].startswith("medconv.callbacks")])
    for subcommand in ("validate", "predict"):
        with pytest.warns(UserWarning, match="RunOutputs added.*PredictionCSVWriter added"):
            cli = run_lightning([subcommand, "--config", str(old / "config.yaml"), "--ckpt_path", "best"])
        _outputs(subcommand, Path(cli.trainer.log_dir), "wsi")


def test_a_mil_run_whose_config_names_the_per_tile_writer_still_writes_slide_predictions(
    fitted: Callable[[str], tuple[Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, mil_run = fitted("mil")
    monkeypatch.chdir(root)
    old = tmp_path / "runs" / "old_mil" / "version_0"
    shutil.copytree(mil_run, old, ignore=shutil.ignore_patterns("eval"))
    writer = "medconv.callbacks.PredictionCSVWriter"  # as base/trainer.yaml lists it for per-sample classifiers
    _edit_callbacks(old / "config.yaml", lambda cbs: [{"class_path": writer} if "PredictionWriter" in c["class_path"] else c for c in cbs])
    with pytest.warns(UserWarning, match="PredictionCSVWriter replaced by medconv.callbacks.BagPredictionWriter"):
        cli = run_lightning(["predict", "--config", str(old / "config.yaml"), "--ckpt_path", "last"])
    _outputs("predict", Path(cli.trainer.log_dir), "mil")


def test_a_users_own_callback_list_keeps_the_runs_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`trainer.callbacks` in a later --config replaces the recipe's list: the fit still writes its summary and
    best-epoch predictions, and its saved config.yaml lists what was put back, so later evaluations are complete."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "my_callbacks.yaml"
    mine.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val/auroc", "mode": "max", "save_last": True}},
        {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/auroc", "mode": "max", "patience": 3}},
    ]}}))
    with pytest.warns(UserWarning, match="RunOutputs added.*BagPredictionWriter added"):
        cli = run_lightning([*fit_args("mil", tmp_path), "--config", str(mine)])
    run_dir = (tmp_path / cli.trainer.log_dir).resolve()
    assert (run_dir / "summary.json").is_file() and (run_dir / "val_predictions_best.csv").is_file()
    saved = [c["class_path"] for c in yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["callbacks"]]
    assert {"medconv.callbacks.RunOutputs", "medconv.callbacks.BagPredictionWriter"} <= set(saved)
