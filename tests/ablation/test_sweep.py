"""Sweep files: expansion into runs and their ids, validation errors, shards, and the commands of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medconv.ablation.cli import main as ablate
from medconv.ablation.commands import fit_args, pretrain_args, weights_name
from medconv.ablation.sweep import expand, load_sweep, parse_shard, parse_sweep, pretrain_runs, shard
from medconv.errors import ConfigError, PretrainedWeightsError
from medconv.models import hub

from ..conftest import write_hf_cache_entry
from .conftest import raw_sweep

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _raw(tmp_path: Path, **changes) -> dict:
    return raw_sweep(tmp_path, **{"val_every_steps": 10, **changes})


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


# --- the ImageNet arm: `pretrained` without a file loads each backbone's timm weights -----------------------------
def test_a_pretrained_init_without_a_file_loads_each_backbones_timm_tag(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"")
    raw = _raw(tmp_path, backbones=[{"name": "convnext_atto", "family": "cnn", "pretrained_tag": "d2_in1k"},
                                    {"name": "resnet", "family": "cnn", "timm_name": "hf-hub:timm/resnet18d.ra2_in1k"}],
               inits={"random": "random", "imagenet": "pretrained", "file": {"pretrained": "w.pth"}})
    sweep = parse_sweep(raw, tmp_path)
    args = {r.run_id: fit_args(sweep, r, tmp_path / r.run_id) for r in expand(sweep)}
    name, flag = "--model.init_args.backbone.init_args.name", "--model.init_args.backbone.init_args.pretrained"
    assert f"{name}=convnext_atto.d2_in1k" in args["convnext_atto-imagenet-f1-s0"] and f"{flag}=true" in args["convnext_atto-imagenet-f1-s0"]
    assert f"{name}=hf-hub:timm/resnet18d.ra2_in1k" in args["resnet-imagenet-f1-s0"]  # a source name is its own weights
    random = args["convnext_atto-random-f1-s0"]
    assert f"{name}=convnext_atto" in random and not any(a.startswith(f"{flag}=") for a in random)
    assert f"--model.init_args.backbone.init_args.pretrained_path={tmp_path / 'w.pth'}" in args["convnext_atto-file-f1-s0"]
    with pytest.raises(ConfigError, match="set by the sweep"):
        clash = parse_sweep({**raw, "overrides": {"model.init_args.backbone.init_args.pretrained": True}}, tmp_path)
        fit_args(clash, expand(clash)[0], tmp_path)
    for tag, message in (("convnext_atto.d2_in1k", "timm tag"), ("", "timm tag")):
        with pytest.raises(ConfigError, match=message):
            parse_sweep(_raw(tmp_path, backbones=[{"name": "convnext_atto", "family": "cnn", "pretrained_tag": tag}]), tmp_path)


def _sweep_file(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text("trainer: {}\n")
    path = tmp_path / "imagenet.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny_imagenet", "configs": ["base.yaml"], "fractions": [1.0], "seeds": [0], "split_seed": 0, "steps": 2,
        "backbones": [{"name": "resnet", "family": "cnn", "timm_name": "test_resnet", "pretrained_tag": "r160_in1k"},
                      {"name": "vit", "family": "vit", "timm_name": "test_vit", "pretrained_tag": "r160_in1k"}],
        "inits": {"random": "random", "imagenet": "pretrained"}}))
    return path


def test_the_dry_run_names_each_arms_weights_and_a_missing_one_stops_the_sweep_before_it_starts(tmp_path, hf_home, capsys):
    import timm

    sweep, out = _sweep_file(tmp_path), tmp_path / "out"
    cached = write_hf_cache_entry(hf_home / "hub", "timm/test_resnet.r160_in1k", timm.create_model("test_resnet"))
    with pytest.raises(PretrainedWeightsError, match=r"vit x imagenet: timm/test_vit.r160_in1k\. To fix: pre-download"):
        ablate(["--config", str(sweep), "--out", str(out), "--dry-run"])
    printed = capsys.readouterr().out
    assert f"resnet x imagenet: test_resnet.r160_in1k (hf-hub timm/test_resnet.r160_in1k) in the cache: {cached / 'model.safetensors'}" in printed
    assert f"vit x imagenet: test_vit.r160_in1k (hf-hub timm/test_vit.r160_in1k) NOT in the cache {hf_home / 'hub'} (offline: missing)" in printed
    with pytest.raises(PretrainedWeightsError, match="test_vit"):
        ablate(["--config", str(sweep), "--out", str(out)])
    assert not out.exists(), "the sweep started although weights were missing"
    capsys.readouterr()

    write_hf_cache_entry(hf_home / "hub", "timm/test_vit.r160_in1k", timm.create_model("test_vit"))
    assert ablate(["--config", str(sweep), "--out", str(out), "--dry-run"]) == 0
    assert "NOT in the cache" not in capsys.readouterr().out


def test_the_shipped_imagenet_sweep_names_real_timm_weights():
    sweep = load_sweep(REPO / "configs" / "ablation" / "mammo_imagenet.yaml")
    (imagenet,) = [i for i in sweep.inits if i.kind == "pretrained"]
    names = {b.name: weights_name(imagenet, b) for b in sweep.backbones}
    assert names == {"convnext_tiny": "convnext_tiny.fb_in1k", "resnet50d": "resnet50d.ra2_in1k",
                     "swin_tiny": "swin_tiny_patch4_window7_224.ms_in1k", "pvt_v2_b2": "pvt_v2_b2.in1k",
                     "hiera_tiny": "hiera_tiny_224.mae_in1k_ft_in1k"}
    for name in names.values():
        assert hub.locate(name).where == f"timm/{name}"  # a tag timm knows, with its weights on the hub
    assert {i.kind for i in sweep.inits} == {"random", "pretrained"} and len(expand(sweep)) == 90
