"""Client of the actor role."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import torch

from quartet.clients.base import GrpcRoleClient, RoleCallError
from quartet.clients.checkpoints import CheckpointCalls
from quartet.clients.request_streams import unary_when_single
from quartet.clients.retry import NO_RETRY
from quartet.clients.scoring import call_logprobs
from quartet.codec import RowBatch
from quartet.codec.dtypes import wire_dtype_named
from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
from quartet.ppo.wire import encode_policy_minibatch
from quartet.v1 import actor_pb2, actor_pb2_grpc, common_pb2
from quartet.weightsync.specs import TensorSpec


class GrpcActorClient(CheckpointCalls, GrpcRoleClient):
    role = "actor"
    ordered_train_steps = True
    """The service applies a TrainStep after the one its header's `after_request_id` names
    (quartet.serving.step_order), so the loop may send the next one before this returns."""

    def __init__(self, address: str, **kwargs) -> None:
        super().__init__(address, **kwargs)
        self.stub = unary_when_single(actor_pb2_grpc.ActorStub(self.channel), self.channel,
                                      actor_pb2.DESCRIPTOR.services_by_name["Actor"])

    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]:
        return call_logprobs(lambda reqs: self._stream("LogProbs", self.stub.LogProbs, reqs),
                             batch, temperature, header or common_pb2.RequestHeader(),
                             f"actor at {self.address}")

    def train_step(self, mb: PolicyMiniBatch, loss: PolicyLossSettings,
                   header: common_pb2.RequestHeader | None = None) -> dict[str, float]:
        resp = self._call("TrainStep", self.stub.TrainStep,
                          encode_policy_minibatch(mb, loss, header or common_pb2.RequestHeader()))
        metrics = {m.name: m.value for m in resp.metrics}
        metrics["policy_version"] = float(resp.policy_version)
        return metrics

    def open_weight_group(self, world_size: int, master_address: str = "",
                          timeout_s: float = 300.0) -> tuple[str, int]:
        """Asks the actor to host the weight group's store: (address, port) on its host."""
        resp = self._call("OpenWeightGroup", self.stub.OpenWeightGroup,
                          actor_pb2.OpenWeightGroupRequest(
                              master_address=master_address, world_size=world_size,
                              timeout_s=timeout_s))
        return resp.master_address, resp.master_port

    def init_weight_group(self, master_address: str, master_port: int, world_size: int,
                          backend: str = "gloo", group_name: str = "quartet-weights",
                          timeout_s: float = 300.0, shared_memory: bool = False
                          ) -> common_pb2.InitWeightGroupResponse:
        return self._call("InitWeightGroup", self.stub.InitWeightGroup,
                          common_pb2.InitWeightGroupRequest(
                              master_address=master_address, master_port=master_port,
                              world_size=world_size, rank=0, backend=backend,
                              group_name=group_name, timeout_s=timeout_s,
                              shared_memory=shared_memory),
                          retry=NO_RETRY)

    def weight_manifest(self, dtype: str = "float32") -> list[TensorSpec]:
        """Names, wire dtypes and shapes of the weights a broadcast or stream will send."""
        msg = self._call("GetWeightManifest", self.stub.GetWeightManifest,
                         actor_pb2.GetWeightManifestRequest(dtype=wire_dtype_named(dtype)))
        return [TensorSpec.from_proto(t, f"tensors[{i}]") for i, t in enumerate(msg.tensors)]

    def broadcast_weights(self, version: int, bucket_bytes: int = 256 << 20,
                          dtype: str = "float32",
                          header: common_pb2.RequestHeader | None = None
                          ) -> actor_pb2.BroadcastWeightsResponse:
        """Sends the weights over the joined weight group (rank 0's side of an update);
        never retried: the receivers take part in it."""
        return self._call("BroadcastWeights", self.stub.BroadcastWeights,
                          actor_pb2.BroadcastWeightsRequest(
                              header=header, version=version, bucket_bytes=bucket_bytes,
                              dtype=wire_dtype_named(dtype)), retry=NO_RETRY)

    def stream_weights(self, chunk_bytes: int = 4 << 20, dtype: str = "float32"
                       ) -> Iterator[common_pb2.TensorChunk]:
        """The weights as TensorChunk messages (the gRPC fallback data plane), in manifest
        order; a failure while iterating names the actor and the RPC."""
        stream = self.stub.StreamWeights(
            actor_pb2.StreamWeightsRequest(chunk_bytes=chunk_bytes,
                                           dtype=wire_dtype_named(dtype)),
            timeout=self.timeout_s)
        try:
            yield from stream
        except grpc.RpcError as exc:
            raise RoleCallError(self.role, self.address, "StreamWeights", exc.code(),
                                exc.details() or "") from None

    def info(self) -> common_pb2.ServiceInfo:
        return self._info(self.stub.GetInfo)
