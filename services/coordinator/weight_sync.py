"""How the coordinator moves actor weights into every rollout replica after an update.

`GroupWeightSync` is the default: the control plane runs over gRPC (manifest → begin on each
replica → actor broadcast → finish on each replica) and the bytes travel over a
`torch.distributed` group whose rank 0 is the actor (NCCL on GPU, gloo on CPU).
`StreamedWeightSync` is the fallback when no group can be formed: the coordinator relays the
actor's chunk stream into each replica's PushWeights call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from quartet.clients.actor import GrpcActorClient
from quartet.clients.rollout import (
    GrpcRolloutClient,
    await_joins,
    push_to_replica,
    update_replicas,
)
from quartet.codec.dtypes import float_dtype
from quartet.telemetry import ContextThreadPoolExecutor
from quartet.v1 import common_pb2, rollout_pb2
from quartet.weightsync import TensorSpec, WeightGroupConfig, free_port

log = logging.getLogger("quartet.coordinator")


class GroupWeightSync:
    def __init__(self, actor: GrpcActorClient, rollouts: Sequence[GrpcRolloutClient],
                 backend: str = "gloo", dtype: str = "float32", bucket_bytes: int = 256 << 20,
                 master_address: str = "127.0.0.1", timeout_s: float = 600.0,
                 run_id: str = "") -> None:
        self.actor = actor
        self.header = common_pb2.RequestHeader(run_id=run_id)
        self.rollouts = list(rollouts)
        self.backend = backend
        float_dtype(dtype, "vllm.dtype")
        self.dtype = dtype
        self.bucket_bytes = bucket_bytes
        self.master_address = master_address
        self.timeout_s = timeout_s
        self._specs: list[TensorSpec] | None = None

    def setup(self) -> None:
        """Every member joins the group concurrently (rendezvous through the actor's store)."""
        cfg = WeightGroupConfig(self.master_address, free_port(self.master_address),
                                1 + len(self.rollouts), 0, self.backend, "quartet-weights",
                                self.timeout_s)
        futures = [r.init_weight_group_future(cfg.with_rank(i + 1))
                   for i, r in enumerate(self.rollouts)]
        self.actor.init_weight_group(cfg.master_address, cfg.master_port, cfg.world_size,
                                     cfg.backend, cfg.group_name, cfg.timeout_s)
        await_joins(self.rollouts, futures)
        log.info("weight group formed: actor + %d rollout replica(s) over %s",
                 len(self.rollouts), self.backend)

    def manifest(self) -> list[TensorSpec]:
        """Names, dtypes and shapes of the actor's weights: fixed for a run, so asked once."""
        if self._specs is None:
            self._specs = self.actor.weight_manifest(self.dtype)
        return self._specs

    def __call__(self, version: int) -> dict[str, float]:
        start = time.perf_counter()
        sent, results = update_replicas(
            self.rollouts, version, self.manifest(), self.bucket_bytes,
            lambda: self.actor.broadcast_weights(version, self.bucket_bytes, self.dtype,
                                                 header=self.header),
            self.timeout_s, header=self.header)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "broadcast_seconds": sent.seconds,
                "load_seconds": max(r.load_seconds for r in results),
                "mbytes": sent.total_bytes / 1e6,
                "mbytes_per_s": sent.total_bytes / 1e6 / max(seconds, 1e-9),
                "buckets": float(sent.num_buckets)}


class StreamedWeightSync:
    """Fallback data plane: actor.StreamWeights relayed into rollout.PushWeights."""

    def __init__(self, actor: GrpcActorClient, rollouts: Sequence[GrpcRolloutClient],
                 dtype: str = "float32", chunk_bytes: int = 4 << 20, run_id: str = "") -> None:
        self.actor = actor
        self.header = common_pb2.RequestHeader(run_id=run_id)
        self.rollouts = list(rollouts)
        float_dtype(dtype, "vllm.dtype")
        self.dtype = dtype
        self.chunk_bytes = chunk_bytes
        self._specs: list[TensorSpec] | None = None

    def setup(self) -> None:
        return None

    def manifest(self) -> list[TensorSpec]:
        """Asked once per run, as in GroupWeightSync."""
        if self._specs is None:
            self._specs = self.actor.weight_manifest(self.dtype)
        return self._specs

    def _push_one(self, rollout: GrpcRolloutClient, version: int,
                  specs: list[TensorSpec]) -> float:
        def requests():
            yield rollout_pb2.PushWeightsRequest(header=self.header, version=version,
                                                 tensors=[s.to_proto() for s in specs])
            for chunk in self.actor.stream_weights(self.chunk_bytes, self.dtype):
                yield rollout_pb2.PushWeightsRequest(chunk=chunk)

        return push_to_replica(rollout, requests()).load_seconds

    def set_rollouts(self, rollouts: Sequence[GrpcRolloutClient]) -> None:
        """The replicas the next update goes to (cluster mode: they come and go)."""
        self.rollouts = list(rollouts)

    def catch_up(self, rollout: GrpcRolloutClient, version: int) -> float:
        """Brings one replica (new, or restarted) to `version` alone, before it serves; the
        others keep serving. Returns the seconds it took (0 when it already serves it)."""
        start = time.perf_counter()
        if rollout.info().weight_version >= version:
            return 0.0
        self._push_one(rollout, version, self.manifest())
        return time.perf_counter() - start

    def __call__(self, version: int) -> dict[str, float]:
        start = time.perf_counter()
        specs = self.manifest()
        with ContextThreadPoolExecutor(len(self.rollouts)) as pool:
            loads = list(pool.map(lambda r: self._push_one(r, version, specs), self.rollouts))
        seconds = time.perf_counter() - start
        mbytes = len(self.rollouts) * sum(s.nbytes for s in specs) / 1e6
        return {"seconds": seconds, "load_seconds": max(loads), "mbytes": mbytes,
                "mbytes_per_s": mbytes / max(seconds, 1e-9)}
