"""Reference role's gRPC servicer: translate, delegate to the frozen model, translate back."""

from __future__ import annotations

from quartet.engines.frozen_model import FrozenCausalLM
from quartet.heap import PhaseTrimmer
from quartet.serving.scoring import stream_logprobs
from quartet.v1 import common_pb2, reference_pb2_grpc


class ReferenceServicer(reference_pb2_grpc.ReferenceServicer):
    def __init__(self, model: FrozenCausalLM) -> None:
        self.model = model
        # the scoring activations, freed, leave the RSS while the actor trains
        self.trimmer = PhaseTrimmer()

    def LogProbs(self, request_iterator, context):
        with self.trimmer.phase():
            yield from stream_logprobs(request_iterator, self.model)

    def ReleaseMemory(self, request, context):
        with self.trimmer.phase():
            freed = self.model.release_memory()
        return common_pb2.ReleaseMemoryResponse(released_bytes=freed)

    def GetInfo(self, request, context):
        return common_pb2.ServiceInfo(
            role="reference", model=self.model.model_path, backend="transformers",
            vocab_size=self.model.vocab_size,
        )
