"""Sweep files: expansion into runs and their ids, validation errors, shards, and the commands of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medconv.ablation.commands import fit_args, pretrain_args
from medconv.ablation.sweep import expand, load_sweep, parse_shard, parse_sweep, pretrain_runs, shard
from medconv.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _raw(tmp_path: Path, **changes) -> dict:
    (tmp_path / "base.yaml").write_text("trainer: {}\n")
    (tmp_path / "pre.yaml").write_text("trainer: {}\n")
    raw = {"configs": ["base.yaml"], "backbones": [{"name": "convnext_atto", "family": "cnn"},
                                                   {"name": "pvt_v2_b0", "family": "vit"}],
           "inits": {"random": "random", "mim": {"pretrain": ["pre.yaml"]}}, "fractions": [0.05, 1.0],
           "seeds": [0, 1], "split_seed": 3, "steps": 50, "val_every_steps": 10}
    return {**raw, **changes}


def test_expansion_gives_every_combination_once_with_readable_ids(tmp_path):
    sweep = parse_sweep(_raw(tmp_path), tmp_path)
    runs = expand(sweep)
    assert len(runs) == 2 * 2 * 2 * 2 and len({r.run_id for r in runs}) == len(runs)
    assert [r.run_id for r in runs] == sorted(r.run_id for r in runs)
    assert "convnext_atto-random-f0.05-s1" in {r.run_id for r in runs}
    assert {r.pretrain_id for r in runs if r.init.name == "mim"} == {"pretrain-convnext_atto-mim", "pretrain-pvt_v2_b0-mim"}
    assert [p.run_id for p in pretrain_runs(sweep)] == ["pretrain-convnext_atto-mim", "pretrain-pvt_v2_b0-mim"]
    assert sweep.configs == (str((tmp_path / "base.yaml").resolve()),)


@pytest.mark.parametrize(("change", "message"), [
    ({"fractoins": [0.1]}, "unknown key"),
    ({"fractions": [0.0]}, "in (0, 1]"),
    ({"fractions": [0.5, 0.5]}, "repeat"),
    ({"seeds": ["a"]}, "integer"),
    ({"steps": 0}, "integer >= 1"),
    ({"configs": ["missing.yaml"]}, "not found"),
    ({"backbones": [{"name": "x", "family": "transformer"}]}, "family"),
    ({"backbones": [{"name": "x", "family": "cnn", "depth": 3}]}, "unknown key"),
    ({"inits": {"ssl": {"ssl_export": "nowhere.safetensors"}}}, "not found"),
    ({"inits": {"ssl": {"pretrained": "a", "pretrain": ["pre.yaml"]}}}, "exactly one"),
    ({"inits": {"bad id": "random"}}, "name"),
])
def test_bad_sweeps_fail_with_a_clear_message(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]").replace("[", r"\[")):
        parse_sweep(_raw(tmp_path, **change), tmp_path)


def test_load_sweep_names_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**_raw(tmp_path), "steps": -1}))
    with pytest.raises(ConfigError, match="s.yaml: steps"):
        load_sweep(path)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shards_partition_the_runs(tmp_path, count):
    runs = [r.run_id for r in expand(parse_sweep(_raw(tmp_path), tmp_path))]
    parts = [shard(runs, i, count) for i in range(count)]
    assert sorted(r for part in parts for r in part) == sorted(runs)
    assert parts == [shard(runs, i, count) for i in range(count)]  # deterministic


def test_shard_syntax():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)


def test_commands_match_compute_and_fix_the_split(tmp_path):
    sweep = parse_sweep(_raw(tmp_path, overrides={"trainer.accelerator": "cpu", "data.init_args.image_size": [64, 64]}), tmp_path)
    run = next(r for r in expand(sweep) if r.run_id == "pvt_v2_b0-mim-f0.05-s1")
    args = fit_args(sweep, run, tmp_path / "root", tmp_path / "enc.safetensors")
    for flag in ("--trainer.max_steps=50", "--trainer.max_epochs=-1", "--trainer.val_check_interval=10",
                 "--data.init_args.split_seed=3", "--data.init_args.seed=1", "--data.init_args.label_fraction=0.05",
                 "--model.init_args.backbone.init_args.strict_weights=true", "--data.init_args.image_size=[64, 64]",
                 f"--model.init_args.backbone.init_args.pretrained_path={tmp_path / 'enc.safetensors'}"):
        assert flag in args
    pre = pretrain_args(sweep, pretrain_runs(sweep)[0], tmp_path / "pre")
    assert "--data.init_args.source.init_args.split_seed=3" in pre and "--model.init_args.backbone.init_args.name=convnext_atto" in pre
    clash = parse_sweep(_raw(tmp_path, overrides={"data.init_args.label_fraction": 0.5}), tmp_path)
    with pytest.raises(ConfigError, match="set by the sweep"):
        fit_args(clash, expand(clash)[0], tmp_path)


def test_shipped_sweeps_expand():
    counts = {}
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if isinstance(raw, dict) and "backbones" in raw:
            sweep = load_sweep(path)
            counts[path.stem] = (len(expand(sweep)), len(pretrain_runs(sweep)))
    assert counts["wsi_cpu"] == (54, 3) and counts["tiny_ablation"][0] >= 4
