"""Methods mixed into every vLLM worker (`worker_extension_cls`) for in-place weight updates.

They run inside the worker that owns the model (in this process with the in-process
engine, in the engine's worker process otherwise), reached with `collective_rpc`. The
weight group is joined there, so on GPU NCCL broadcasts land directly in the worker's
device memory.

Loading goes through `reload_weights` (vLLM's in-place reload: checkpoint-format names,
layer-wise re-processing). Plain `model.load_weights` fails on CPU once vLLM repacked the
weights for its kernels.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator

import torch

from quartet.engines.generation.vllm_cpu_weights import (
    ReleasedWorker,
    kv_cache_storages,
    repack_kept_weights,
)
from quartet.weightsync import (
    TensorSpec,
    WeightGroupConfig,
    WeightReceiver,
    init_weight_group,
    receive_staged,
)

EXTENSION_CLS = "quartet.engines.generation.worker_extension.WeightSyncWorkerExtension"


def specs_to_wire(specs: Iterable[TensorSpec]) -> list[tuple[str, str, list[int]]]:
    """Plain tuples (name, dtype name, shape): safe for any `collective_rpc` transport."""
    return [(s.name, str(s.dtype).removeprefix("torch."), list(s.shape)) for s in specs]


def specs_from_wire(items: Iterable[tuple[str, str, list[int]]]) -> list[TensorSpec]:
    return [TensorSpec(n, getattr(torch, d), tuple(shape)) for n, d, shape in items]


def _drained(items: deque) -> Iterator:
    """Yields the items and forgets each one as it goes."""
    while items:
        yield items.popleft()


class WeightSyncWorkerExtension:
    """Mixed into vLLM's worker class; `self` is the worker (has `model_runner`, `rank`)."""

    def quartet_init_weight_group(self, config: dict) -> int:
        """Joins the weight group; a worker with tensor-parallel rank r takes rank + r."""
        cfg = WeightGroupConfig(**config)
        cfg = cfg.with_rank(cfg.rank + int(getattr(self, "rank", 0)))
        self._quartet_group = init_weight_group(cfg)
        return cfg.rank

    def quartet_receive_weights(self, version: int, specs: list) -> dict:
        group = getattr(self, "_quartet_group", None)
        if group is None:
            raise RuntimeError("weight group: not initialized in this worker")
        # The whole session is staged before reload starts, so a refused or broken session
        # changes nothing. No reference stays here: each staged tensor is freed once loaded,
        # before a released KV cache comes back.
        return self._quartet_reload(_drained(deque(
            receive_staged(WeightReceiver(group), version, specs_from_wire(specs)))))

    def quartet_load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict:
        return self._quartet_reload(named_tensors)

    def quartet_release_memory(self) -> int:
        """Frees the weights and KV cache until the next load (CPU workers; see
        `vllm_release`); returns the bytes freed."""
        released = getattr(self, "_quartet_released", None) or ReleasedWorker(self.model_runner)
        self._quartet_released = released
        return released.release()

    def quartet_unfault_kv_cache(self) -> int:
        """Zeroes the KV cache by handing its pages back to the kernel (CPU workers;
        `StorageSet.zero_`): vLLM zero-fills it at start, which makes every block resident
        before any request; afterwards a block's pages come back as vLLM writes them. Returns
        the cache's bytes."""
        cache = kv_cache_storages(self.model_runner)
        cache.zero_()
        return cache.nbytes

    def _quartet_reload(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict:
        released = getattr(self, "_quartet_released", None)
        if released is not None:
            released.reacquire()
        stats = {"num_tensors": 0, "num_bytes": 0}

        def counted():
            for name, t in named_tensors:
                stats["num_tensors"] += 1
                stats["num_bytes"] += t.numel() * t.element_size()
                yield name, t

        start = time.perf_counter()
        reload = getattr(self, "reload_weights", None) or self.model_runner.reload_weights
        reload(weights_iterator=counted())
        repack_kept_weights(self.model_runner.model)  # a tied LM head: see its docstring
        if released is not None:
            released.finish()
            self._quartet_released = None
        stats["seconds"] = time.perf_counter() - start
        return stats
