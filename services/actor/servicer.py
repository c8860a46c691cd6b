"""Actor role's gRPC servicer: translate, delegate to `Actor`, translate back."""

from __future__ import annotations

from quartet.codec import chunk_tensor
from quartet.codec.chunks import DEFAULT_CHUNK_BYTES, MIN_CHUNK_BYTES
from quartet.codec.dtypes import torch_dtype
from quartet.heap import PhaseTrimmer
from quartet.ppo.training_role import load_response, prepare_run_response, save_response
from quartet.ppo.wire import decode_policy_minibatch
from quartet.serving.errors import InvalidArgument
from quartet.serving.scoring import stream_logprobs
from quartet.serving.step_order import StepOrder
from quartet.v1 import actor_pb2, actor_pb2_grpc, common_pb2
from quartet.weightsync import WeightGroupConfig
from services.actor.actor import Actor


def optional_dtype(wire: int, field: str):
    return None if wire == common_pb2.DTYPE_UNSPECIFIED else torch_dtype(wire, field)


def weight_group_config(req: common_pb2.InitWeightGroupRequest) -> WeightGroupConfig:
    try:
        return WeightGroupConfig(req.master_address, req.master_port, req.world_size, req.rank,
                                 req.backend or "gloo", req.group_name or "weights",
                                 req.timeout_s or 600.0, req.shared_memory)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


class ActorServicer(actor_pb2_grpc.ActorServicer):
    def __init__(self, actor: Actor, save_root: str = ".") -> None:
        self.actor = actor
        self.save_root = save_root
        self.trimmer = PhaseTrimmer()  # activations freed after each pass leave the RSS
        self.steps = StepOrder("actor")  # pipelined TrainSteps apply in the order sent

    def LogProbs(self, request_iterator, context):
        with self.trimmer.phase():
            yield from stream_logprobs(request_iterator, self.actor, self.actor.global_step,
                                       with_entropy=False)

    def TrainStep(self, request_iterator, context):
        with self.trimmer.phase():
            mb, loss, header = decode_policy_minibatch(request_iterator,
                                                       self.actor.vocab_size,
                                                       self.actor.max_len)
            metrics = self.steps.run(header, lambda: self.actor.train_step(mb, loss))
        return actor_pb2.TrainStepResponse(
            metrics=[common_pb2.Metric(name=k, value=v) for k, v in metrics.items()],
            policy_version=self.actor.global_step, global_step=self.actor.global_step,
        )

    def Save(self, request, context):
        return save_response(self.actor, request, self.save_root)

    def PrepareRun(self, request, context):
        return prepare_run_response(self.actor, request)

    def Load(self, request, context):
        return load_response(self.actor, request, self.save_root)

    def OpenWeightGroup(self, request, context):
        address, port = self.actor.open_weight_group(request.master_address,
                                                     request.world_size,
                                                     request.timeout_s or 600.0)
        return actor_pb2.OpenWeightGroupResponse(master_address=address, master_port=port)

    def InitWeightGroup(self, request, context):
        cfg = weight_group_config(request)
        self.actor.init_weight_group(cfg)
        return common_pb2.InitWeightGroupResponse(rank=cfg.rank, world_size=cfg.world_size)

    def GetWeightManifest(self, request, context):
        specs = self.actor.manifest(optional_dtype(request.dtype, "dtype"))
        return actor_pb2.WeightManifest(version=self.actor.weight_version,
                                        tensors=[s.to_proto() for s in specs])

    def BroadcastWeights(self, request, context):
        # The sync follows the last TrainStep within milliseconds, too soon for the idle
        # trim: give the freed activations back now (in the background, while this sends),
        # not after the sync, when the rollout has already reloaded its weights beside them.
        self.trimmer.trim_now()
        with self.trimmer.phase():
            stats = self.actor.broadcast(request.version, request.bucket_bytes,
                                         optional_dtype(request.dtype, "dtype"))
        return actor_pb2.BroadcastWeightsResponse(
            version=stats.version, num_tensors=stats.num_tensors,
            num_buckets=stats.num_buckets, total_bytes=stats.total_bytes,
            seconds=stats.seconds,
        )

    def StreamWeights(self, request, context):
        chunk = request.chunk_bytes or DEFAULT_CHUNK_BYTES
        if chunk < MIN_CHUNK_BYTES:
            raise InvalidArgument(f"chunk_bytes: must be 0 (default) or >= {MIN_CHUNK_BYTES}, "
                                  f"got {chunk}")
        dtype = optional_dtype(request.dtype, "dtype")
        with self.actor.lock, self.actor.exported_weights(dtype) as weights:
            for name, tensor in weights:
                yield from chunk_tensor(name, tensor, chunk)

    def GetInfo(self, request, context):
        return common_pb2.ServiceInfo(
            role="actor", model=self.actor.cfg.model.model_name_or_path,
            policy_version=self.actor.global_step, backend="deepspeed",
            vocab_size=self.actor.vocab_size,
        )
