"""Prompts in, samples out: from an in-process engine or from rollout services.

A :class:`Sampler` hides where generation runs, so batch inference and the iterative methods
run the same code against vLLM/HF in this process or against ``quartet serve rollout``
replicas, and hand a new policy to either after each training round.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch

from quartet.config.inference import (
    GenerationEngineConfig,
    SamplingGroupConfig,
)
from quartet.data.prompts import PromptItem, load_prompt_items
from quartet.types import PromptOutput, SamplingConfig

__all__ = ["LocalSampler", "PromptItem", "Sampler", "ServiceSampler", "build_sampler",
           "load_prompt_items", "sampling_config"]

log = logging.getLogger("quartet.methods")


def sampling_config(rollout: SamplingGroupConfig, n: int, temperature: float | None = None,
                    seed_offset: int = 0) -> SamplingConfig:
    """The engine's sampling parameters from ``--rollout.*`` (``temperature`` overrides;
    ``seed_offset`` gives each round of an iterative method fresh samples)."""
    return SamplingConfig(n=n, temperature=rollout.temperature if temperature is None
                          else temperature, top_p=rollout.top_p, top_k=rollout.top_k,
                          max_new_tokens=rollout.max_new_tokens,
                          seed=None if rollout.seed is None else rollout.seed + seed_offset)


class Sampler(ABC):
    """Where samples come from; weights can be replaced between rounds."""

    @abstractmethod
    def sample(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[PromptOutput]:
        """All outputs, ordered by prompt index."""

    @abstractmethod
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                     version: int) -> None:
        """Replace the policy's weights in place (Hugging Face parameter names)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the engine or channels."""


class LocalSampler(Sampler):
    """A generation engine in this process (vLLM or Hugging Face ``generate``)."""

    def __init__(self, backend: str, model_path: str, engine: GenerationEngineConfig,
                 seed: int) -> None:
        from quartet.engines.generation import build_generator

        self.generator = build_generator(
            backend, model_path, dtype=engine.dtype, max_model_len=engine.max_model_len,
            seed=seed, tensor_parallel_size=engine.tensor_parallel_size,
            gpu_memory_utilization=engine.gpu_memory_utilization)

    def sample(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[PromptOutput]:
        return self.generator.generate(prompts, sampling).collect()

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                     version: int) -> None:
        self.generator.load_weights(named_tensors)

    def close(self) -> None:
        self.generator.close()


class ServiceSampler(Sampler):
    """Rollout services (``quartet serve rollout``); prompts are split over the replicas and
    new weights are pushed to each over gRPC (the streamed fallback data plane)."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        from quartet.clients.rollout import GrpcRolloutClient

        self.clients = [GrpcRolloutClient(a) for a in addresses]

    def sample(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[PromptOutput]:
        from quartet.clients.rollout import generate_sharded

        return generate_sharded(self.clients, prompts, sampling)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                     version: int) -> None:
        tensors = [(n, t.detach().to("cpu", copy=True)) for n, t in named_tensors]
        for client in self.clients:
            client.push_weights(version, tensors)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def build_sampler(backend: str, model_path: str, engine: GenerationEngineConfig,
                  seed: int) -> Sampler:
    """Rollout services when ``--vllm.address`` is set, else an engine in this process
    (``backend`` vllm or hf)."""
    if engine.address:
        return ServiceSampler(engine.address)
    return LocalSampler(backend, model_path, engine, seed)
