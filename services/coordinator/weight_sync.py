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
from concurrent.futures import ThreadPoolExecutor

import grpc

from quartet.clients.actor import GrpcActorClient
from quartet.clients.base import RoleCallError
from quartet.clients.rollout import GrpcRolloutClient
from quartet.v1 import actor_pb2, common_pb2, rollout_pb2
from quartet.weightsync import TensorSpec, WeightGroupConfig, free_port

log = logging.getLogger("quartet.coordinator")

WIRE_DTYPES = {"float32": common_pb2.DTYPE_FLOAT32, "bfloat16": common_pb2.DTYPE_BFLOAT16,
               "float16": common_pb2.DTYPE_FLOAT16}


def _rollout_error(client: GrpcRolloutClient, method: str, exc: grpc.RpcError) -> RoleCallError:
    return RoleCallError("rollout", client.address, method, exc.code(), exc.details() or "")


class GroupWeightSync:
    def __init__(self, actor: GrpcActorClient, rollouts: Sequence[GrpcRolloutClient],
                 backend: str = "gloo", dtype: str = "float32", bucket_bytes: int = 256 << 20,
                 master_address: str = "127.0.0.1", timeout_s: float = 600.0) -> None:
        self.actor = actor
        self.rollouts = list(rollouts)
        self.backend = backend
        self.dtype = WIRE_DTYPES[dtype]
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
        for r, f in zip(self.rollouts, futures, strict=True):
            try:
                f.result()
            except grpc.RpcError as exc:
                raise _rollout_error(r, "InitWeightGroup", exc) from None
        log.info("weight group formed: actor + %d rollout replica(s) over %s",
                 len(self.rollouts), self.backend)

    def manifest(self) -> list[TensorSpec]:
        """Names, dtypes and shapes of the actor's weights: fixed for a run, so asked once
        (under ZeRO-3 answering it gathers every parameter)."""
        if self._specs is None:
            msg = self.actor._call("GetWeightManifest", self.actor.stub.GetWeightManifest,
                                   actor_pb2.GetWeightManifestRequest(dtype=self.dtype))
            self._specs = [TensorSpec.from_proto(t, f"tensors[{i}]")
                           for i, t in enumerate(msg.tensors)]
        return self._specs

    def __call__(self, version: int) -> dict[str, float]:
        start = time.perf_counter()
        specs = self.manifest()
        for r in self.rollouts:
            try:
                r.begin_weight_update(version, specs, self.bucket_bytes)
            except grpc.RpcError as exc:
                raise _rollout_error(r, "BeginWeightUpdate", exc) from None
        sent = self.actor._call(
            "BroadcastWeights", self.actor.stub.BroadcastWeights,
            actor_pb2.BroadcastWeightsRequest(version=version, bucket_bytes=self.bucket_bytes,
                                              dtype=self.dtype))
        load = 0.0
        futures = [r.finish_weight_update_future(version, self.timeout_s) for r in self.rollouts]
        for r, f in zip(self.rollouts, futures, strict=True):
            try:
                resp = f.result()
            except grpc.RpcError as exc:
                raise _rollout_error(r, "FinishWeightUpdate", exc) from None
            if resp.version != version:
                raise RuntimeError(f"rollout at {r.address} reports version {resp.version} "
                                   f"after an update to {version}")
            load = max(load, resp.load_seconds)
        return {"seconds": time.perf_counter() - start, "broadcast_seconds": sent.seconds,
                "load_seconds": load, "mbytes": sent.total_bytes / 1e6,
                "buckets": float(sent.num_buckets)}


class StreamedWeightSync:
    """Fallback data plane: actor.StreamWeights relayed into rollout.PushWeights."""

    def __init__(self, actor: GrpcActorClient, rollouts: Sequence[GrpcRolloutClient],
                 dtype: str = "float32", chunk_bytes: int = 4 << 20) -> None:
        self.actor = actor
        self.rollouts = list(rollouts)
        self.dtype = WIRE_DTYPES[dtype]
        self.chunk_bytes = chunk_bytes
        self._manifest: actor_pb2.WeightManifest | None = None

    def setup(self) -> None:
        return None

    def manifest(self) -> actor_pb2.WeightManifest:
        """Asked once per run, as in GroupWeightSync."""
        if self._manifest is None:
            self._manifest = self.actor._call(
                "GetWeightManifest", self.actor.stub.GetWeightManifest,
                actor_pb2.GetWeightManifestRequest(dtype=self.dtype))
        return self._manifest

    def _push_one(self, rollout: GrpcRolloutClient, version: int,
                  manifest: actor_pb2.WeightManifest) -> float:
        def requests():
            yield rollout_pb2.PushWeightsRequest(version=version, tensors=manifest.tensors)
            stream = self.actor.stub.StreamWeights(
                actor_pb2.StreamWeightsRequest(chunk_bytes=self.chunk_bytes, dtype=self.dtype))
            for chunk in stream:
                yield rollout_pb2.PushWeightsRequest(chunk=chunk)

        try:
            return rollout.push_weights_requests(requests()).load_seconds
        except grpc.RpcError as exc:
            raise _rollout_error(rollout, "PushWeights", exc) from None

    def __call__(self, version: int) -> dict[str, float]:
        start = time.perf_counter()
        manifest = self.manifest()
        with ThreadPoolExecutor(len(self.rollouts)) as pool:
            loads = list(pool.map(lambda r: self._push_one(r, version, manifest), self.rollouts))
        return {"seconds": time.perf_counter() - start, "load_seconds": max(loads)}
