"""Client of the reference role."""

from __future__ import annotations

import torch

from quartet.clients.base import INFO_TIMEOUT_S, GrpcRoleClient
from quartet.clients.request_streams import unary_when_single
from quartet.clients.scoring import call_logprobs
from quartet.codec import RowBatch
from quartet.v1 import common_pb2, reference_pb2, reference_pb2_grpc


class GrpcReferenceClient(GrpcRoleClient):
    role = "reference"

    def __init__(self, address: str, **kwargs) -> None:
        super().__init__(address, **kwargs)
        self.stub = unary_when_single(reference_pb2_grpc.ReferenceStub(self.channel), self.channel,
                                      reference_pb2.DESCRIPTOR.services_by_name["Reference"])

    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 header: common_pb2.RequestHeader | None = None) -> list[torch.Tensor]:
        return call_logprobs(lambda reqs: self._stream("LogProbs", self.stub.LogProbs, reqs),
                             batch, temperature, header or common_pb2.RequestHeader(),
                             f"reference at {self.address}")

    def release_memory(self, header: common_pb2.RequestHeader | None = None) -> int:
        """Frees the reference's weights until its next LogProbs; returns the bytes freed."""
        return self._call("ReleaseMemory", self.stub.ReleaseMemory,
                          common_pb2.ReleaseMemoryRequest(header=header),
                          timeout=INFO_TIMEOUT_S).released_bytes

    def info(self) -> common_pb2.ServiceInfo:
        return self._info(self.stub.GetInfo)
