"""Where evaluation writes and which checkpoint `best` / `last` mean: pure path logic on hand-made run folders."""

import json
from types import SimpleNamespace

import pytest

from medconv.errors import CheckpointError
from medconv.run_dirs import eval_dir, is_external, resolve_checkpoint, run_of


def _run(tmp_path, best="best-epoch003.ckpt"):
    run = tmp_path / "runs" / "x" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    for name in (best, "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"")
    (run / "summary.json").write_text(json.dumps({"best_checkpoint": str(run / "checkpoints" / best)}))
    (run / "config.yaml").write_text("data:\n  init_args:\n    manifest: /data/train.csv\n")
    return run


def test_best_and_last_resolve_inside_the_run(tmp_path):
    run = _run(tmp_path)
    assert run_of("best", [str(run / "config.yaml")]) == run
    assert resolve_checkpoint("best", run) == str(run / "checkpoints" / "best-epoch003.ckpt")
    assert resolve_checkpoint("last", run) == str(run / "checkpoints" / "last.ckpt")
    assert run_of(str(run / "checkpoints" / "last.ckpt"), ["configs/x.yaml"]) == run


def test_unresolvable_checkpoints_say_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match="needs the run it belongs to"):
        resolve_checkpoint("best", None)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        resolve_checkpoint(str(tmp_path / "nope.ckpt"), None)
    run = _run(tmp_path)
    (run / "summary.json").unlink()
    (run / "checkpoints" / "best-epoch007.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot tell the best checkpoint"):
        resolve_checkpoint("best", run)


def test_each_evaluation_gets_a_new_folder(tmp_path):
    root, name = eval_dir(tmp_path, "test", now=0)
    (root / name).mkdir(parents=True)
    root2, name2 = eval_dir(tmp_path, "test", now=0)
    assert root2 == tmp_path / "eval" and name2 != name and name2.startswith(name)


def test_external_means_another_manifest_than_the_fitted_one(tmp_path):
    run = _run(tmp_path)

    def data(manifest):
        return SimpleNamespace(init_args={"manifest": manifest, "test_fraction": 0.2})

    assert is_external(data("/data/ext.csv"), run)
    assert not is_external(data("/data/train.csv"), run)
    assert not is_external(data(None), run)
