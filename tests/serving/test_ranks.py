"""RankGroup with one rank: the same calls run directly (the multi-rank path is covered by
tests/integration/test_data_parallel.py with real processes)."""

import pytest
import torch

from quartet.codec import RowBatch
from quartet.serving.ranks import RankGroup


class Scorer:
    def shard_lengths(self, rows: RowBatch, scale: int) -> list[int]:
        return [scale * r.numel() for r in rows.rows]


def test_one_rank_runs_calls_in_place():
    group = RankGroup(0, 1)
    rows = RowBatch([torch.arange(n + 1) for n in range(5)], [1] * 5)
    assert group.scatter_rows(Scorer(), "shard_lengths", rows, 10) == [10, 20, 30, 40, 50]
    assert group.call_all(Scorer(), "shard_lengths", rows, 1) == [[1, 2, 3, 4, 5]]
    with group.fanout("anything", [("mine",)]) as f:
        assert f.args == ("mine",)
    group.stop()  # nothing to stop


def test_only_rank_zero_starts_calls_and_argument_count_must_match():
    with pytest.raises(ValueError, match="per_rank: 2 argument tuples for 1 ranks"):
        RankGroup(0, 1).call(Scorer(), "shard_lengths", [(), ()])
    with pytest.raises(RuntimeError, match="only rank 0"):
        with RankGroup(1, 1).fanout("x", [()]):
            pass
