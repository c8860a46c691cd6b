"""Client of the critic role."""

from __future__ import annotations

import torch

from quartet.clients.base import GrpcRoleClient
from quartet.clients.checkpoints import CheckpointCalls
from quartet.clients.request_streams import unary_when_single
from quartet.clients.scoring import merge_by_offset
from quartet.codec import RowBatch, encode_token_batch, ragged_from_proto, token_batch_slices
from quartet.ppo.batch import ValueLossSettings, ValueMiniBatch
from quartet.ppo.wire import encode_value_minibatch
from quartet.v1 import common_pb2, critic_pb2, critic_pb2_grpc


class GrpcCriticClient(CheckpointCalls, GrpcRoleClient):
    role = "critic"
    ordered_train_steps = True
    """The service applies a TrainStep after the one its header's `after_request_id` names
    (quartet.serving.step_order), so the loop may send the next one before this returns."""

    def __init__(self, address: str, **kwargs) -> None:
        super().__init__(address, **kwargs)
        self.stub = unary_when_single(critic_pb2_grpc.CriticStub(self.channel), self.channel,
                                      critic_pb2.DESCRIPTOR.services_by_name["Critic"])

    def values(self, batch: RowBatch, header: common_pb2.RequestHeader | None = None
               ) -> list[torch.Tensor]:
        header = header or common_pb2.RequestHeader()
        reqs = (critic_pb2.ValuesRequest(header=header, batch=encode_token_batch(part))
                for part in token_batch_slices(batch))
        responses = self._stream("Values", self.stub.Values, reqs)
        parts = [(r.row_offset, ragged_from_proto(r.values, "values")) for r in responses]
        return merge_by_offset(len(batch), parts, f"critic at {self.address}")

    def train_step(self, mb: ValueMiniBatch, loss: ValueLossSettings,
                   header: common_pb2.RequestHeader | None = None) -> dict[str, float]:
        resp = self._call("TrainStep", self.stub.TrainStep,
                          encode_value_minibatch(mb, loss, header or common_pb2.RequestHeader()))
        return {m.name: m.value for m in resp.metrics}

    def info(self) -> common_pb2.ServiceInfo:
        return self._info(self.stub.GetInfo)
