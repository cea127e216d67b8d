"""CLAM-SB's instance clustering loss and TransMIL's grid and masked attention on hand-made inputs."""

from __future__ import annotations

import pytest
import torch

from medconv.models.mil import CLAMSB, TransMIL
from medconv.models.mil.transmil import grid_positions

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(evidence: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """(1, N, C, 2) instance logits whose class-1 classifier says `evidence` (+: evidence of class 1)."""
    pairs = torch.zeros(1, len(evidence), num_classes, 2)
    pairs[0, :, 1, 1] = evidence
    return pairs.requires_grad_(True)


def test_clam_instance_loss_pseudo_labels_top_and_bottom_k():
    clam = CLAMSB(4, 2, hidden_dim=8, attention_dim=4, k_sample=2)
    attention = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    label = torch.tensor([1])
    agrees = _pairs(torch.tensor([5.0, 5.0, 0.0, -5.0, -5.0]))  # top-2 evidence, bottom-2 not
    disagrees = _pairs(torch.tensor([-5.0, -5.0, 0.0, 5.0, 5.0]))
    low, high = clam.instance_loss(attention, agrees, mask, label), clam.instance_loss(attention, disagrees, mask, label)
    assert low < 0.01 < 5 < high
    low.backward()
    assert agrees.grad[0, 2].abs().sum() == 0  # the middle instance is not pseudo-labelled
    assert agrees.grad[..., 0, :].abs().sum() == 0  # only the slide's class's classifier learns (no subtyping)
    subtyping = CLAMSB(4, 2, hidden_dim=8, attention_dim=4, k_sample=2, subtyping=True)
    pairs = _pairs(torch.zeros(5))
    subtyping.instance_loss(attention, pairs, mask, label).backward()
    assert pairs.grad[0, :2, 0].abs().sum() > 0 and pairs.grad[0, 2:, 0].abs().sum() == 0  # other class: its top-k


def test_clam_instance_loss_respects_padding_and_small_bags():
    clam = CLAMSB(4, 2, hidden_dim=8, attention_dim=4, k_sample=8)
    attention = torch.tensor([[0.6, 0.4, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    pairs = torch.zeros(2, 4, 2, 2, requires_grad=True)
    clam.instance_loss(attention, pairs, mask, torch.tensor([1, 0])).backward()
    assert pairs.grad[0, :2].abs().sum() > 0 and pairs.grad[0, 2:].abs().sum() == 0  # k clipped to 1, padding never picked
    assert pairs.grad[1].abs().sum() == 0  # a one-instance bag has nothing to contrast
    assert clam.instance_loss(attention[1:], pairs[1:], mask[1:], torch.tensor([0])) is None


def test_clam_forward_outputs():
    torch.manual_seed(0)
    clam = CLAMSB(4, 3, hidden_dim=8, attention_dim=4, k_sample=2)
    x, mask = torch.randn(2, 6, 4), torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = clam(x, mask)
    assert out.logits.shape == (2, 3) and out.instance_logits.shape == (2, 6, 3) and out.extra_loss is None
    assert (out.instance_logits[1, 4:] == 0).all()
    out = clam(x, mask, torch.tensor([2, 0]))
    assert out.extra_loss.ndim == 0 and torch.isfinite(out.extra_loss)
    out.extra_loss.backward()
    assert clam.instance_classifiers.weight.grad.abs().sum() > 0 and clam.project[0].weight.grad.abs().sum() > 0


def test_grid_positions_lay_each_bag_on_its_own_square():
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    flat, side = grid_positions(mask)
    assert side == 3  # ceil(sqrt(5))
    assert flat[0].tolist() == [0, 1, 2, 3, 4]  # row-major on 3 x 3
    assert flat[1].tolist() == [0, 1, 9, 9, 9]  # 2 instances: a 2 x 2 square (row 0), padding to the spare slot


@pytest.mark.parametrize("n", [1, 7, 13])
def test_transmil_forward_odd_bags_and_mask(n):
    torch.manual_seed(n)
    model = TransMIL(5, 3, hidden_dim=16, num_heads=2, dropout=0.0).eval()
    x = torch.randn(2, n + 2, 5)
    mask = torch.ones(2, n + 2, dtype=torch.bool)
    mask[1, n:] = False
    out = model(x, mask)
    assert out.logits.shape == (2, 3) and out.attention.shape == (2, n + 2) and torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.attention.sum(1), torch.ones(2))
    assert (out.attention[1, n:] == 0).all() and (out.attention[0] > 0).all()
    out.logits.sum().backward()
    assert model.cls_token.grad is not None and model.ppeg.convs[0].weight.grad.abs().sum() > 0


def test_transmil_kernel_choice_is_checked():
    from medconv.errors import ConfigError

    with pytest.raises(ConfigError, match="attention"):
        TransMIL(4, 2, hidden_dim=8, num_heads=2, attention="fastest")  # type: ignore[arg-type]
    model = TransMIL(4, 2, hidden_dim=8, num_heads=2, attention="math").eval()
    assert torch.isfinite(model(torch.randn(1, 6, 4)).logits).all()
