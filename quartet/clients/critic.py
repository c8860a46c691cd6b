"""Client of the critic role."""

from __future__ import annotations

import torch

from quartet.clients.base import GrpcRoleClient
from quartet.clients.scoring import merge_by_offset
from quartet.codec import RowBatch, encode_token_batch, ragged_from_proto, token_batch_slices
from quartet.ppo.batch import ValueLossSettings, ValueMiniBatch
from quartet.ppo.wire import encode_value_minibatch
from quartet.v1 import common_pb2, critic_pb2, critic_pb2_grpc


class GrpcCriticClient(GrpcRoleClient):
    role = "critic"

    def __init__(self, address: str, **kwargs) -> None:
        super().__init__(address, **kwargs)
        self.stub = critic_pb2_grpc.CriticStub(self.channel)

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

    def save(self, output_dir: str, hf_export: bool = True, tag: str = ""):
        return self._call("Save", self.stub.Save,
                          common_pb2.SaveRequest(output_dir=output_dir, hf_export=hf_export,
                                                 tag=tag))

    def prepare_run(self, run_id: str, train: common_pb2.TrainSettings
                    ) -> common_pb2.PrepareRunResponse:
        """Announces a run and its settings; a mismatch fails with FAILED_PRECONDITION
        naming the field."""
        return self._call("PrepareRun", self.stub.PrepareRun, common_pb2.PrepareRunRequest(
            header=common_pb2.RequestHeader(run_id=run_id), train=train))

    def info(self) -> common_pb2.ServiceInfo:
        return self._info(self.stub.GetInfo)
