from medconv.data.samplers import EpochSeededSampler, balanced_weights, decode_draw


def test_order_depends_on_seed_and_epoch_only():
    a, b = EpochSeededSampler(50, seed=1), EpochSeededSampler(50, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    indices = sorted(decode_draw(v, 50)[0] for v in a)
    assert indices == list(range(50))


def test_draws_are_unique_per_epoch_and_position():
    s = EpochSeededSampler(10, seed=0)
    draws = set()
    for epoch in range(3):
        s.set_epoch(epoch)
        draws |= {decode_draw(v, 10)[1] for v in s}
    assert len(draws) == 30


def test_balanced_sampling_draws_classes_equally():
    labels = [0] * 90 + [1] * 10
    s = EpochSeededSampler(100, seed=0, weights=balanced_weights(labels))
    drawn = [labels[decode_draw(v, 100)[0]] for epoch in range(20) for v in (s.set_epoch(epoch) or s)]
    assert 0.4 < sum(drawn) / len(drawn) < 0.6
