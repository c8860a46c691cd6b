import pytest

from quartet.sharding import contiguous, round_robin


def test_round_robin_deals_items_in_turn():
    assert round_robin(5, 2) == [[0, 2, 4], [1, 3]]
    assert round_robin(1, 3) == [[0], [], []]


@pytest.mark.parametrize("n, k", [(7, 3), (6, 2), (2, 4), (0, 2)])
def test_contiguous_blocks_restore_order_and_balance(n, k):
    shards = contiguous(n, k)
    assert [i for s in shards for i in s] == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_zero_shards_is_an_error():
    with pytest.raises(ValueError, match="num_shards"):
        contiguous(3, 0)
