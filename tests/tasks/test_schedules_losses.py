import math

import pytest
import torch

from medconv.errors import ConfigError
from medconv.tasks import CrossEntropy, FocalLoss, WarmupCosine


def _lrs(scheduler: WarmupCosine, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_cosine_by_hand():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, warmup_epochs=1.0, min_lr_ratio=0.0)
    assert opt.param_groups[0]["lr"] == 1.0  # unbound: the plain base LR
    sched.bind_schedule(total_steps=10, steps_per_epoch=2)
    lrs = _lrs(sched, opt, 10)
    # warmup over 2 steps: (step + 1) / 3; then cosine over the remaining 8 steps
    assert lrs[:2] == pytest.approx([1 / 3, 2 / 3])
    assert lrs[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])


def test_warmup_steps_win_over_epochs():
    """Runs sized in steps (the ablations) warm up over the same steps whatever an epoch's length."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, warmup_epochs=5.0, warmup_steps=3, min_lr_ratio=0.0)
    sched.bind_schedule(total_steps=10, steps_per_epoch=1)
    assert _lrs(sched, opt, 4) == pytest.approx([1 / 4, 2 / 4, 3 / 4, 1.0])
    with pytest.raises(ConfigError):
        WarmupCosine(opt, warmup_steps=-1)


def test_warmup_cosine_resumes_where_it_stopped():
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = WarmupCosine(opt, warmup_epochs=0.5, min_lr_ratio=0.01)
        sched.bind_schedule(20, 4)
        return opt, sched

    opt, sched = make()
    straight = _lrs(sched, opt, 12)
    opt, sched = make()
    _lrs(sched, opt, 5)
    state = sched.state_dict()
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    sched2.bind_schedule(20, 4)
    assert _lrs(sched2, opt2, 7) == pytest.approx(straight[5:])


def test_criteria_take_class_weights_as_lists():
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, 1])
    weighted = CrossEntropy(class_weights=[1.0, 3.0])(logits, target)
    assert weighted == pytest.approx(torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0])))
    # gamma 0 is weighted cross-entropy averaged per sample
    focal = FocalLoss(gamma=0.0)(logits, target)
    assert focal == pytest.approx(torch.nn.functional.cross_entropy(logits, target))
    assert FocalLoss(gamma=2.0)(logits, target) < focal  # easy examples count less
