"""DINO: the loss, centre, EMA and schedules against hand computations; learning, export and local crops per family."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medconv import keys
from medconv.errors import ConfigError
from medconv.models import TimmBackbone
from medconv.ssl.dino import DINO, cosine_momentum, dino_loss, fixed_input_size, teacher_temperature, updated_centre

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "convnext": ("convnext_atto", {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]}),
    "vit": ("vit_tiny_patch16_224", {"depth": 2, "embed_dim": 64, "num_heads": 2}),
    "hiera": ("hiera_tiny_224", {"stages": [1, 1, 1, 1], "embed_dim": 32, "num_heads": 1}),
    "swin": ("swin_tiny_patch4_window7_224", {"depths": [1, 1, 2, 1], "embed_dim": 32, "num_heads": [1, 2, 2, 4]}),
    "pvt_v2": ("pvt_v2_b0", {"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 48, 64], "num_heads": [1, 1, 2, 2]}),
}



def _backbone(family: str, **kwargs) -> TimmBackbone:
    name, args = TINY[family]
    return TimmBackbone(name, in_chans=3, img_size=(64, 64), model_args=args, **kwargs)


def _dino(family: str, dynamic: bool = False, **kwargs) -> DINO:
    torch.manual_seed(0)
    return DINO(_backbone(family, dynamic_img_size=dynamic), out_dim=32, hidden_dim=32, bottleneck_dim=16, **kwargs)


# --- maths against numpy ---------------------------------------------------------------------------------
def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    teacher = [rng.normal(size=(2, 3)) for _ in range(2)]  # two global crops, batch 2, 3 prototypes
    student = [rng.normal(size=(2, 3)) for _ in range(3)]  # the two globals and one local crop
    centre = np.array([[0.3, -0.2, 0.1]])
    t_temp, s_temp = 0.05, 0.1
    # by hand: teacher i vs student v for v != i -> pairs (0,1), (0,2), (1,0), (1,2)
    expected = []
    for i in range(2):
        p = _np_softmax((teacher[i] - centre) / t_temp)
        for v in range(3):
            if v != i:
                log_q = np.log(_np_softmax(student[v] / s_temp))
                expected.append(np.mean(-(p * log_q).sum(axis=1)))
    got = dino_loss([torch.tensor(s) for s in student], [torch.tensor(t) for t in teacher], torch.tensor(centre), s_temp, t_temp)
    assert len(expected) == 4
    assert got.item() == pytest.approx(float(np.mean(expected)), rel=1e-6)


def test_same_view_pairs_are_excluded():
    """Student crop 0 is never compared with teacher crop 0: its gradient ignores what that teacher says."""
    torch.manual_seed(0)
    teacher = [torch.randn(4, 8), torch.randn(4, 8)]
    student = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]
    grads = []
    for t0 in (teacher[0], teacher[0] + 5 * torch.randn(4, 8)):
        loss = dino_loss(student, [t0, teacher[1]], torch.zeros(1, 8), 0.1, 0.04)
        grads.append(torch.autograd.grad(loss, student[0])[0])
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ConfigError, match="two crops"):
        dino_loss(student[:1], teacher[:1], torch.zeros(1, 8), 0.1, 0.04)


def test_centre_update_by_hand():
    centre = torch.tensor([[1.0, 2.0, 3.0]])
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, 4.0, 6.0], [1.0, -1.0, 0.0], [1.0, 1.0, 2.0]])
    new = updated_centre(centre, logits, momentum=0.9)
    mean = np.array([1.0, 1.0, 2.0])  # column means by hand
    np.testing.assert_allclose(new.numpy()[0], 0.9 * np.array([1.0, 2.0, 3.0]) + 0.1 * mean, rtol=1e-6)


_DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from medconv.ssl.dino import updated_centre
    rank, init = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    logits = torch.full((2, 3), float(rank)) if rank == 0 else torch.tensor([[3.0, 6.0, 9.0]] * 4)
    print(updated_centre(torch.zeros(1, 3), logits, 0.5).tolist())
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_centre_is_averaged_across_processes(tmp_path):
    """Rank 0 has 2 rows of 0, rank 1 has 4 rows of (3, 6, 9): the batch mean over 6 rows is (2, 4, 6) on both."""
    init = f"file://{tmp_path / 'store'}"
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_SCRIPT, str(r), init], stdout=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for out in outs:
        np.testing.assert_allclose(eval(out)[0], [1.0, 2.0, 3.0], rtol=1e-6)  # 0.5 * 0 + 0.5 * (2, 4, 6)


def test_momentum_and_temperature_schedules():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)  # half-way up the cosine
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(500, 100, 0.9) == pytest.approx(1.0)
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature(30, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(99, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.0) == pytest.approx(0.07)


def test_ema_update_arithmetic():
    dino = _dino("convnext", momentum=0.9)
    with torch.no_grad():
        for p in (*dino.backbone.parameters(), *dino.head.parameters()):
            p.fill_(1.0)
        for p in (*dino.teacher_backbone.parameters(), *dino.teacher_head.parameters()):
            p.fill_(3.0)
    dino.after_optimizer_step(50, 100)
    m = 1 - 0.1 * (math.cos(math.pi / 2) + 1) / 2  # 0.95
    for p in (*dino.teacher_backbone.parameters(), *dino.teacher_head.parameters()):
        torch.testing.assert_close(p, torch.full_like(p, m * 3.0 + (1 - m) * 1.0))
    assert int(dino.step) == 50 and int(dino.total_steps) == 100  # schedules resume from checkpoints
    assert dino.current_teacher_temp() == pytest.approx(0.07)
    assert not any(p.requires_grad for p in dino.teacher_backbone.parameters())


# --- families ----------------------------------------------------------------------------------------------
def test_fixed_input_size_per_family():
    assert fixed_input_size(_backbone("convnext")) is None
    assert fixed_input_size(_backbone("pvt_v2")) is None
    assert fixed_input_size(_backbone("vit")) == (64, 64)
    assert fixed_input_size(_backbone("vit", dynamic_img_size=True)) is None
    assert fixed_input_size(_backbone("swin")) == (64, 64)
    assert fixed_input_size(_backbone("swin", dynamic_img_size=True)) is None
    assert fixed_input_size(_backbone("hiera")) == (64, 64)


def _crops(batch: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(1)
    g = torch.randn(batch, 3, 64, 64)
    return [g + 0.1 * torch.randn_like(g), g + 0.1 * torch.randn_like(g), g[:, :, :32, :32].clone(), g[:, :, 32:, 32:].clone()]


@pytest.mark.parametrize(("family", "dynamic"), [("convnext", False), ("vit", True), ("hiera", False)])
def test_a_few_steps_lower_the_loss(family, dynamic):
    """CNN, ViT with local crops at their own size, Hiera (fixed size) with local crops resized to it."""
    dino = _dino(family, dynamic, momentum=0.9, teacher_temp_warmup=0.0)
    dino.train()
    teacher_before = [p.clone() for p in dino.teacher_backbone.parameters()]
    opt = torch.optim.AdamW([p for p in dino.parameters() if p.requires_grad], lr=1e-3)
    batch = {keys.CROPS: _crops()}
    losses = []
    for step in range(4):
        out = dino(batch)
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None for p in dino.teacher_backbone.parameters())  # the teacher never gets gradients
        opt.step()
        dino.after_optimizer_step(step + 1, 100)
        losses.append(out["loss"].item())
    assert set(out) >= {"loss", "teacher_temp", "teacher_entropy"} and all(v.ndim == 0 for v in out.values())
    assert losses[-1] < losses[0], losses
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, dino.teacher_backbone.parameters(), strict=True))
    assert torch.count_nonzero(dino.centre) > 0


def test_fixed_size_models_resize_or_drop_local_crops():
    crops = _crops()
    resized = _dino("hiera", fixed_size_local_crops="resize").eval()
    dropped = _dino("hiera", fixed_size_local_crops="drop").eval()
    with torch.no_grad():
        globals_only = dropped({keys.CROPS: crops[:2]})["loss"]
        assert dropped({keys.CROPS: crops})["loss"] == pytest.approx(globals_only.item())
        assert resized({keys.CROPS: crops})["loss"] != pytest.approx(globals_only.item())
    with pytest.raises(ConfigError, match=r"built for \(64, 64\)"):
        resized({keys.CROPS: [crops[2], crops[3]]})  # global crops the model cannot take
    with pytest.raises(ConfigError, match="views: crops"):
        resized({keys.IMAGE: crops[0]})


@pytest.mark.parametrize(("family", "dynamic"), [("convnext", False), ("vit", True)])
def test_export_loads_strictly(tmp_path, family, dynamic):
    """The teacher's backbone keeps timm's keys: `pretrained_path` + `strict_weights` loads it with nothing missing."""
    dino = _dino(family, dynamic)
    dino.after_optimizer_step(1, 10)
    with torch.no_grad():
        next(dino.backbone.parameters()).add_(1.0)  # student and teacher now differ: the export is the teacher
        dino.after_optimizer_step(2, 10)
    encoder = dino.export_encoder()
    assert encoder is dino.teacher_backbone
    state = {k: v.contiguous() for k, v in encoder.model.state_dict().items()}
    assert set(state) == set(_backbone(family, dynamic_img_size=dynamic).model.state_dict())
    save_file(state, str(tmp_path / "encoder.safetensors"))
    name, args = TINY[family]
    loaded = TimmBackbone(name, in_chans=3, img_size=(64, 64), model_args=args, dynamic_img_size=dynamic,
                          pretrained_path=str(tmp_path / "encoder.safetensors"), strict_weights=True)
    assert loaded.weight_report is not None and loaded.weight_report.ok
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    first = next(iter(state))
    assert not torch.equal(state[first], dino.backbone.model.state_dict()[first])
