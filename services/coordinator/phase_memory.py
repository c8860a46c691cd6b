"""Roles giving back memory they need only in their own phase (--vllm.enable_sleep,
--ref.enable_sleep; OpenRLHF's --vllm_enable_sleep and --ref_reward_offload do the same on
GPUs).

In a synchronous iteration each role works in one phase and waits through the others, and
the process tree peaks while the actor trains. What the waiting roles hold then is dead
weight: the rollout's copy of the weights (overwritten by the weight sync after training
anyway) and its KV cache, and the reference's weights (read only in the score phase). So:

- after the generate phase the rollouts free their weights and KV cache; the weight sync
  after training brings both back (it carries every weight), before the next Generate;
- after the score phase the reference frees its weights; its next LogProbs reads them back
  from a spill file, bit for bit.

Not with asynchronous generation: there the rollouts generate the next batch while the actor
trains, so they have no idle phase (the config refuses the combination).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from quartet.clients.base import RoleCallError
from quartet.v1 import common_pb2

log = logging.getLogger("quartet.coordinator")


class ReleasingRollout(Protocol):
    address: str

    def release_memory(self, header: common_pb2.RequestHeader | None = None) -> int: ...


class ReleasingReference(Protocol):
    def release_memory(self, header: common_pb2.RequestHeader | None = None) -> int: ...


class PhaseMemory:
    """Called by the loop when a phase ends; tells the roles done with it to release."""

    def __init__(self, rollouts: Sequence[ReleasingRollout]
                 | Callable[[], Sequence[ReleasingRollout]] = (),
                 reference: ReleasingReference | None = None, run_id: str = "") -> None:
        """`rollouts`: the replicas, or a function returning the current ones (registry
        mode: replicas that joined mid-run release too, and those that left are not
        called)."""
        self.rollouts = rollouts if callable(rollouts) else list(rollouts)
        self.reference = reference
        self.run_id = run_id

    def __call__(self, phase: str, iteration: int) -> None:
        header = common_pb2.RequestHeader(run_id=self.run_id, iteration=iteration,
                                          request_id=f"{self.run_id}/{iteration}/release")
        if phase == "generate":
            current = self.rollouts() if callable(self.rollouts) else self.rollouts
            for replica in current:
                try:
                    freed = replica.release_memory(header)
                except grpc.RpcError as exc:
                    raise RoleCallError("rollout", replica.address, "ReleaseMemory",
                                        exc.code(), exc.details() or "") from None
                log.debug("rollout at %s released %.0f MB", replica.address, freed / 1e6)
        elif phase == "score" and self.reference is not None:
            freed = self.reference.release_memory(header)
            log.debug("reference released %.0f MB", freed / 1e6)
