"""`python benchmarks/foreign_weights.py` offline: a file in the lukemelas layout already in its work folder loads with
every key mapped, and the photo check fails for weights that know nothing (a seeded random model)."""

from __future__ import annotations

import timm
import torch

from ..models.test_key_maps import to_efficientnet_pytorch


def test_a_random_file_maps_every_key_but_fails_the_photo_check(tmp_path, capsys, script):
    torch.manual_seed(0)
    (tmp_path / "extracted" / "pkg").mkdir(parents=True)
    torch.save(to_efficientnet_pytorch(timm.create_model("efficientnet_lite0")), tmp_path / "extracted" / "pkg" / "w.pth")
    assert script("foreign_weights").main(["--work", str(tmp_path)]) == 1  # mapped, but not ImageNet weights
    printed = capsys.readouterr().out
    assert "missing 0, unexpected 0, mis-shaped 0" in printed and "renamed 296 keys by the key map efficientnet_pytorch" in printed
    assert "top-1 sensible on" in printed and "top-1 sensible on 3/3" not in printed
