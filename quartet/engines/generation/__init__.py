"""Generation engines for the rollout: a small `Generator` interface, `VllmGenerator`
(vLLM, GPU or CPU) and `HFGenerator` (Hugging Face `generate`), the shared
and `RolloutEngine` which adds weight versions and update sessions. The data they exchange
with clients (`SamplingConfig`, `PromptOutput`, `UpdateResult`) lives in `quartet.types`.

Backends are imported lazily: importing this package does not import vLLM.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from quartet.engines.generation.base import GenerationStream, Generator
from quartet.engines.generation.rollout_engine import RolloutEngine, RolloutInfo
from quartet.engines.generation.sampling import validate_prompts
from quartet.types import SamplingConfig

log = logging.getLogger("quartet.generation")

BACKENDS = ("auto", "vllm", "hf")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(backend: str) -> str:
    """'auto' -> 'vllm' when vLLM is importable, else 'hf' (said in the log)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if vllm_available():
        return "vllm"
    log.warning("vLLM is not importable here: using the Hugging Face generate backend "
                "(slower; pass --backend hf to choose it explicitly)")
    return "hf"


def probe(generator: Generator) -> None:
    """One greedy token for one short prompt: raises what the engine raises when it cannot
    run this model (e.g. vLLM's CPU attention rejects head size 16 only at the first step)."""
    stream = generator.generate([[1, 2]], SamplingConfig(n=1, temperature=0.0,
                                                         max_new_tokens=1))
    outputs = list(stream)
    if len(outputs) != 1 or not outputs[0].samples:
        raise RuntimeError(f"probe generation returned {len(outputs)} outputs")


def build_generator(backend: str, model: str, **kwargs: Any) -> Generator:
    """Builds the backend's generator; keyword arguments not known to it are ignored.

    With backend 'auto', a vLLM engine that cannot run the model (fails to start, or fails
    a one-token probe) is closed and Hugging Face generate is used instead, with a warning
    that names the cause; an explicit 'vllm' fails with that cause.
    """
    requested = backend
    backend = resolve_backend(backend)
    if backend == "vllm":
        from quartet.engines.generation.vllm_generator import VllmGenerator

        allowed = {"dtype", "max_model_len", "seed", "kv_cache_bytes", "gpu_memory_utilization",
                   "multiprocess", "tensor_parallel_size", "enforce_eager", "sleep_mode",
                   "engine_kwargs"}
        generator = None
        try:
            generator = VllmGenerator(model, **{k: v for k, v in kwargs.items() if k in allowed})
            probe(generator)
            return generator
        except Exception as exc:
            if generator is not None:
                generator.close()
            if requested != "auto":
                raise RuntimeError(f"vLLM cannot run {model}: {type(exc).__name__}: "
                                   f"{exc}") from exc
            log.warning("vLLM cannot run %s (%s: %s); falling back to Hugging Face generate "
                        "(slower; pass --backend hf to choose it explicitly)", model,
                        type(exc).__name__, " ".join(str(exc).split())[:300])
    if int(kwargs.get("tensor_parallel_size") or 1) > 1:
        raise ValueError(f"tensor_parallel_size: {kwargs['tensor_parallel_size']} needs the "
                         "vLLM backend (Hugging Face generate runs on one device)")
    from quartet.engines.generation.hf_generator import HFGenerator

    allowed = {"dtype", "max_model_len", "seed", "device", "max_batch_rows"}
    return HFGenerator(model, **{k: v for k, v in kwargs.items() if k in allowed})


__all__ = [
    "BACKENDS",
    "GenerationStream",
    "Generator",
    "RolloutEngine",
    "RolloutInfo",
    "build_generator",
    "resolve_backend",
    "validate_prompts",
    "vllm_available",
]
