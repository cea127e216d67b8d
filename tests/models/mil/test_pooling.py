"""Attention pooling on hand-made bags: attention finds the one instance that carries the label, padding is inert,
and a padded batch equals its bags run alone (for every aggregator)."""

from __future__ import annotations

import pytest
import torch

from medconv import keys
from medconv.mil import collate_bags
from medconv.models.mil import ABMIL, CLAMSB, GatedAttention, TransMIL

pytestmark = pytest.mark.usefixtures("one_thread")

D = 6


def _aggregators() -> list:
    return [
        ABMIL(D, 2, hidden_dim=16, attention_dim=8, dropout=0.0),
        CLAMSB(D, 2, hidden_dim=16, attention_dim=8, dropout=0.0, k_sample=2),
        TransMIL(D, 2, hidden_dim=16, num_heads=2, dropout=0.0),
    ]


def test_gated_attention_masks_padding_exactly():
    torch.manual_seed(0)
    attention = GatedAttention(D, 8)
    h = torch.randn(2, 5, D)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    a = attention(h, mask)
    assert a.dtype == torch.float32 and torch.allclose(a.sum(1), torch.ones(2))
    assert (a[1, 2:] == 0).all() and (a[0] > 0).all()
    assert (attention(h, torch.zeros_like(mask)) == 0).all()  # an empty bag: zeros, not NaN


def test_attention_concentrates_on_the_positive_instance():
    """Positive bags hold one instance with a marker feature among noise; after a short fit ABMIL attends to it."""
    g = torch.Generator().manual_seed(0)

    def batch(n_bags: int = 32, n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.randn(n_bags, n, D, generator=g)
        y = torch.arange(n_bags) % 2
        where = torch.randint(0, n, (n_bags,), generator=g)
        x[y == 1, where[y == 1], 0] += 4.0
        return x, y, where

    torch.manual_seed(0)
    model = ABMIL(D, 2, hidden_dim=16, attention_dim=8, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        x, y, _ = batch()
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y, where = batch(64)
    with torch.no_grad():
        out = model(x)
    positive = y == 1
    on_target = out.attention[positive, where[positive]]
    print(f"attention on the positive instance {on_target.mean():.2f}")
    assert on_target.mean() > 0.6, f"mean attention on the positive instance {on_target.mean():.2f} (uniform: 0.125)"
    # Measured over seeds 0-9 (generator and init): attention 0.77-0.86, accuracy on these 64 bags 0.83-0.97 (0.94 for
    # seed 0, unchanged with AVX2 or baseline kernels in place of AVX-512). Chance: attention 0.125, accuracy 0.5.
    assert (out.logits.argmax(1) == y).float().mean() > 0.75


@pytest.mark.parametrize("index", [0, 1, 2], ids=["abmil", "clam_sb", "transmil"])
def test_padded_batch_equals_bags_alone(index):
    torch.manual_seed(index)
    model = _aggregators()[index].eval()
    bags = [torch.randn(n, D) for n in (7, 3, 10, 1)]
    samples = [{keys.FEATURES: b, keys.LABEL: i % 2, keys.SLIDE_ID: f"s{i}"} for i, b in enumerate(bags)]
    batch = collate_bags(samples)
    batch[keys.FEATURES][~batch[keys.MASK]] = 1e3  # whatever sits in the padding must not matter
    with torch.no_grad():
        out = model(batch[keys.FEATURES], batch[keys.MASK])
        alone = [model(b[None]) for b in bags]
    for i, (bag, single) in enumerate(zip(bags, alone, strict=True)):
        n = len(bag)
        torch.testing.assert_close(out.logits[i], single.logits[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.attention[i, :n], single.attention[0], rtol=1e-4, atol=1e-6)
        assert (out.attention[i, n:] == 0).all()
        if out.instance_logits is not None:
            torch.testing.assert_close(out.instance_logits[i, :n], single.instance_logits[0], rtol=1e-4, atol=1e-5)


def test_collate_pads_and_masks():
    samples = [
        {keys.FEATURES: torch.ones(3, 4), keys.COORDS: torch.ones(3, 2, dtype=torch.long), keys.LABEL: 1, keys.SLIDE_ID: "a"},
        {keys.FEATURES: torch.ones(5, 4), keys.COORDS: torch.ones(5, 2, dtype=torch.long), keys.LABEL: 0, keys.SLIDE_ID: "b"},
    ]
    batch = collate_bags(samples)
    assert batch[keys.FEATURES].shape == (2, 5, 4) and batch[keys.COORDS].shape == (2, 5, 2)
    assert batch[keys.MASK].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch[keys.FEATURES][0, 3:].abs().sum() == 0
    assert batch[keys.LABEL].tolist() == [1, 0] and batch[keys.SLIDE_ID] == ["a", "b"]
    one = collate_bags(samples[:1])
    assert one[keys.FEATURES].shape == (1, 3, 4) and one[keys.MASK].all()
    mixed = collate_bags([samples[0], {k: v for k, v in samples[1].items() if k != keys.COORDS}])
    assert keys.COORDS not in mixed  # only keys every bag has
