"""A world of one for in-process DeepSpeed tests, fully torn down afterwards.

Why the teardown resets DeepSpeed's module state: DeepSpeed caches the process group (and
groups derived from it) in module globals; after ``destroy_process_group`` a later
``init_distributed`` (another test module or another suite) would otherwise reuse dead groups.
"""

from __future__ import annotations

import gc
import importlib
import os
from collections.abc import Iterator

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _reset_deepspeed() -> None:
    import deepspeed.comm.comm as ds_comm
    import deepspeed.utils.groups as ds_groups

    ds_comm.cdb = None
    importlib.reload(ds_groups)


def world_of_one() -> Iterator:
    import torch.distributed as dist

    # An earlier test's engine left as garbage (a vLLM engine whose start failed) destroys
    # the process group when it is collected: collect it now, not inside this world.
    gc.collect()
    saved = {k: os.environ.get(k) for k in _ENV}
    from quartet.engines.distributed import init_distributed

    if not dist.is_initialized():
        # an in-process vLLM engine of an earlier test may have destroyed the process group
        # DeepSpeed derived its cached groups from ("Group ... is not registered")
        _reset_deepspeed()
    yield init_distributed()
    if dist.is_initialized():
        dist.destroy_process_group()
    _reset_deepspeed()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
