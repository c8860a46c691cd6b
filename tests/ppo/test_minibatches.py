"""PPO mini-batch order: whole prompt groups shuffled when groups tile the mini-batches."""

import random

from quartet.ppo.minibatches import epoch_order


def test_groups_stay_whole_and_in_order():
    order = epoch_order(64, 4, 16, random.Random(0))
    assert sorted(order) == list(range(64))
    groups = [order[i:i + 4] for i in range(0, 64, 4)]
    assert all(g == list(range(g[0], g[0] + 4)) and g[0] % 4 == 0 for g in groups)
    assert order != list(range(64))  # shuffled


def test_rows_are_shuffled_when_groups_do_not_tile_the_mini_batches():
    for n, group, size in ((64, 1, 16), (60, 4, 10), (30, 4, 10)):
        order = epoch_order(n, group, size, random.Random(1))
        assert sorted(order) == list(range(n))
        runs = sum(b == a + 1 for a, b in zip(order, order[1:], strict=False))
        assert runs < n // 2  # not group-wise
