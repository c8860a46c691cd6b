"""`RolloutServicer`: the `quartet.v1.Rollout` contract translated onto a `RolloutEngine`.

Each RPC decodes the request, calls the engine once, and encodes the result. Errors are
raised by the engine or the codec with the offending field's name; the server's interceptor
turns them into status codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

import quartet
from quartet.codec import DEFAULT_MAX_TENSOR_BYTES, ragged_from_proto
from quartet.engines.generation import RolloutEngine
from quartet.heap import PhaseTrimmer
from quartet.serving.errors import InvalidArgument
from quartet.types import PromptOutput, SamplingConfig, UpdateResult
from quartet.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc
from quartet.weightsync import TensorSpec, WeightGroupConfig
from quartet.weightsync.stream import PushedWeights

DEFAULT_GROUP_TIMEOUT_S = 600.0


def sampling_from_proto(msg: rollout_pb2.SamplingParams) -> SamplingConfig:
    """Proto defaults: top_p 0 is read as 1, top_k 0 as off."""
    return SamplingConfig(
        n=msg.n,
        temperature=msg.temperature,
        top_p=msg.top_p if msg.top_p != 0 else 1.0,
        top_k=msg.top_k if msg.top_k != 0 else -1,
        max_new_tokens=msg.max_new_tokens,
        min_new_tokens=msg.min_new_tokens,
        stop=tuple(msg.stop),
        seed=msg.seed if msg.has_seed else None,
        logprobs=msg.logprobs,
    )


def output_to_proto(out: PromptOutput) -> rollout_pb2.GenerateResponse:
    return rollout_pb2.GenerateResponse(
        prompt_index=out.prompt_index,
        prompt_tokens=out.prompt_tokens,
        weight_version=out.weight_version,
        samples=[
            rollout_pb2.Sample(
                response_tokens=s.token_ids,
                logprobs=s.logprobs or [],
                text=s.text or "",
                finish_reason=s.finish_reason,
            )
            for s in out.samples
        ],
    )


def specs_from_proto(tensors) -> list[TensorSpec]:
    return [TensorSpec.from_proto(t, f"tensors[{i}]") for i, t in enumerate(tensors)]


def group_config_from_proto(msg: common_pb2.InitWeightGroupRequest) -> WeightGroupConfig:
    try:
        return WeightGroupConfig(
            master_address=msg.master_address,
            master_port=msg.master_port,
            world_size=msg.world_size,
            rank=msg.rank,
            backend=msg.backend or "gloo",
            group_name=msg.group_name or "weights",
            timeout_s=msg.timeout_s or DEFAULT_GROUP_TIMEOUT_S,
            shared_memory=msg.shared_memory,
        )
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


class RolloutServicer(rollout_pb2_grpc.RolloutServicer):
    def __init__(self, engine: RolloutEngine,
                 max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
                 trimmer: PhaseTrimmer | None = None) -> None:
        self._engine = engine
        self._max_tensor_bytes = max_tensor_bytes
        # what a generation or a weight load freed leaves the RSS once none is in flight
        self._trimmer = trimmer if trimmer is not None else PhaseTrimmer()

    def Generate(self, request: rollout_pb2.GenerateRequest,
                 context: grpc.ServicerContext) -> Iterator[rollout_pb2.GenerateResponse]:
        rows = ragged_from_proto(request.prompt_tokens, "prompt_tokens")
        if rows and rows[0].dtype.is_floating_point:
            raise InvalidArgument(f"prompt_tokens.values.dtype: token ids must be integers, "
                                  f"got {rows[0].dtype}")
        expected = request.header.policy_version if request.header.policy_version > 0 else None
        stream = self._engine.generate(
            [r.tolist() for r in rows],
            sampling_from_proto(request.sampling),
            return_text=request.return_text,
            expected_version=expected,
        )
        # The client went away (cancel, deadline, disconnect): abort its engine requests.
        context.add_callback(stream.cancel)
        with self._trimmer.phase():
            try:
                if request.batch_outputs:
                    for batch in stream.batches():
                        msg = output_to_proto(batch[0])
                        msg.more.extend(output_to_proto(out) for out in batch[1:])
                        yield msg
                else:
                    for out in stream:
                        yield output_to_proto(out)
            finally:
                stream.cancel()  # no-op when the stream already ended

    def InitWeightGroup(self, request: common_pb2.InitWeightGroupRequest,
                        context: grpc.ServicerContext) -> common_pb2.InitWeightGroupResponse:
        cfg = self._engine.init_weight_group(group_config_from_proto(request))
        return common_pb2.InitWeightGroupResponse(rank=cfg.rank, world_size=cfg.world_size)

    def BeginWeightUpdate(
        self, request: rollout_pb2.BeginWeightUpdateRequest, context: grpc.ServicerContext
    ) -> rollout_pb2.BeginWeightUpdateResponse:
        num_buckets = self._engine.begin_weight_update(
            request.version, specs_from_proto(request.tensors), request.bucket_bytes,
            run_id=request.header.run_id)
        return rollout_pb2.BeginWeightUpdateResponse(version=request.version,
                                                     num_buckets=num_buckets)

    def FinishWeightUpdate(
        self, request: rollout_pb2.FinishWeightUpdateRequest, context: grpc.ServicerContext
    ) -> rollout_pb2.FinishWeightUpdateResponse:
        return self._loaded(lambda: self._engine.finish_weight_update(request.version,
                                                                      request.timeout_s))

    def PushWeights(self, request_iterator, context: grpc.ServicerContext
                    ) -> rollout_pb2.FinishWeightUpdateResponse:
        pushed = PushedWeights(request_iterator, self._max_tensor_bytes)
        return self._loaded(lambda: self._engine.push_weights(
            pushed.version, pushed.specs, pushed.tensors(), run_id=pushed.header.run_id))

    def _loaded(self, load: Callable[[], UpdateResult]
                ) -> rollout_pb2.FinishWeightUpdateResponse:
        """Runs a weight load, then trims the heap at once (`PhaseTrimmer.trim_now`, in the
        background). The load frees what it staged (the received buckets, vLLM's unpacked
        copies of the weights it packs) and the coordinator's next Generate follows within
        milliseconds, too soon for the idle trim: those pages stayed resident through the
        whole generate phase and were given back only after it. The trim that follows the
        generate phase returns them anyway, so trimming here costs no extra page faults."""
        with self._trimmer.phase():
            result = load()
        self._trimmer.trim_now()
        return rollout_pb2.FinishWeightUpdateResponse(version=result.version,
                                                      load_seconds=result.load_seconds)

    def AbortWeightUpdate(
        self, request: rollout_pb2.AbortWeightUpdateRequest, context: grpc.ServicerContext
    ) -> rollout_pb2.AbortWeightUpdateResponse:
        if request.version < 0:
            raise InvalidArgument(f"version: must be >= 0 (0: any open session), "
                                  f"got {request.version}")
        aborted, version = self._engine.abort_weight_update(request.version, request.reason)
        return rollout_pb2.AbortWeightUpdateResponse(aborted=aborted, version=version)

    def ReleaseMemory(self, request: common_pb2.ReleaseMemoryRequest,
                      context: grpc.ServicerContext) -> common_pb2.ReleaseMemoryResponse:
        with self._trimmer.phase():
            freed = self._engine.release_memory()
        return common_pb2.ReleaseMemoryResponse(released_bytes=freed)

    def GetInfo(self, request: common_pb2.GetInfoRequest,
                context: grpc.ServicerContext) -> common_pb2.ServiceInfo:
        info = self._engine.info()
        return common_pb2.ServiceInfo(
            role="rollout",
            model=info.model,
            policy_version=info.weight_version,
            inflight_requests=info.inflight_requests,
            backend=info.backend,
            vocab_size=info.vocab_size,
            version=getattr(quartet, "__version__", ""),
            max_model_len=info.max_model_len,
            updating=info.updating,
            run_id=info.run_id,
        )
