"""Critic role's gRPC servicer: translate, delegate to `Critic`, translate back."""

from __future__ import annotations

import torch

from quartet.codec import decode_token_batch, ragged_to_proto
from quartet.ppo.training_role import load_response, prepare_run_response, save_response
from quartet.ppo.wire import decode_value_minibatch
from quartet.serving.errors import InvalidArgument
from quartet.serving.step_order import StepOrder
from quartet.v1 import common_pb2, critic_pb2, critic_pb2_grpc
from services.critic.critic import Critic


class CriticServicer(critic_pb2_grpc.CriticServicer):
    def __init__(self, critic: Critic, save_root: str = ".") -> None:
        self.critic = critic
        self.save_root = save_root
        self.steps = StepOrder("critic")  # pipelined TrainSteps apply in the order sent

    def Values(self, request_iterator, context):
        for req in request_iterator:
            batch = decode_token_batch(req.batch, "batch", self.critic.vocab_size,
                                       self.critic.max_len)
            if len(batch) == 0:
                raise InvalidArgument("batch.tokens: no rows")
            values = self.critic.values(batch)
            yield critic_pb2.ValuesResponse(row_offset=batch.row_offset,
                                            values=ragged_to_proto(values, torch.float32))

    def TrainStep(self, request_iterator, context):
        mb, loss, header = decode_value_minibatch(request_iterator, self.critic.vocab_size,
                                                  self.critic.max_len)
        metrics = self.steps.run(header, lambda: self.critic.train_step(mb, loss))
        return critic_pb2.CriticTrainStepResponse(
            metrics=[common_pb2.Metric(name=k, value=v) for k, v in metrics.items()],
            global_step=self.critic.global_step,
        )

    def Save(self, request, context):
        return save_response(self.critic, request, self.save_root)

    def PrepareRun(self, request, context):
        return prepare_run_response(self.critic, request)

    def Load(self, request, context):
        return load_response(self.critic, request, self.save_root)

    def GetInfo(self, request, context):
        return common_pb2.ServiceInfo(role="critic",
                                      model=self.critic.cfg.model.model_name_or_path,
                                      backend="deepspeed", vocab_size=self.critic.vocab_size)
