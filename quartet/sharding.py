"""How a batch is split over workers, in one place: rollout replicas and data-parallel ranks.

Both splits are deterministic functions of (number of items, number of workers), so the side
that scatters and the side that gathers agree on which item went where without sending it.
"""

from __future__ import annotations


def round_robin(num_items: int, num_shards: int) -> list[list[int]]:
    """Item i goes to shard i % num_shards (spreads prompts of similar length over replicas)."""
    if num_shards < 1:
        raise ValueError(f"num_shards: must be >= 1, got {num_shards}")
    return [list(range(k, num_items, num_shards)) for k in range(num_shards)]


def contiguous(num_items: int, num_shards: int) -> list[range]:
    """Consecutive blocks whose sizes differ by at most one, the larger ones first; gathering
    the shards in order restores the original order."""
    if num_shards < 1:
        raise ValueError(f"num_shards: must be >= 1, got {num_shards}")
    base, extra = divmod(num_items, num_shards)
    out, start = [], 0
    for k in range(num_shards):
        size = base + (1 if k < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out
