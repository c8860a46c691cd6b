"""The weight group counts every tensor-parallel worker of every engine as its own rank."""

import pytest

from services.coordinator.weight_sync import weight_group_ranks


def test_each_tp_worker_takes_its_own_rank_after_the_actor():
    # Listing 1: 4 engines of TP 2 -> the actor + 8 workers
    assert weight_group_ranks([2, 2, 2, 2]) == (9, [1, 3, 5, 7])
    assert weight_group_ranks([1, 1]) == (3, [1, 2])
    assert weight_group_ranks([4, 1]) == (6, [1, 5])


def test_a_replica_without_workers_is_refused():
    with pytest.raises(ValueError, match="workers_per_replica"):
        weight_group_ranks([2, 0])
