"""Reward role's gRPC servicer: one ScoreResponse per ScoreRequest slice, in order."""

from __future__ import annotations

from quartet.rewards.base import RewardFunction, RewardInputs, check_inputs, pad_list
from quartet.rewards.http import RemoteRewardError, RemoteRewardUnavailable
from quartet.serving.errors import Internal, InvalidArgument, Unavailable
from quartet.v1 import common_pb2, reward_pb2, reward_pb2_grpc


def decode_score_request(req: reward_pb2.ScoreRequest) -> RewardInputs:
    n = len(req.queries)
    if n == 0:
        raise InvalidArgument("queries: no samples to score")
    batch = None
    if req.HasField("batch"):  # token ids, for a reward model: the codec (torch) loads here
        from quartet.codec import decode_token_batch

        batch = decode_token_batch(req.batch, "batch")
    inputs = RewardInputs(
        queries=list(req.queries),
        prompts=pad_list(req.prompts, n),
        responses=pad_list(req.responses, n),
        labels=pad_list(req.labels, n),
        batch=batch if batch is not None and len(batch) else None,
    )
    try:
        check_inputs(inputs)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    return inputs


class RewardServicer(reward_pb2_grpc.RewardServicer):
    def __init__(self, reward: RewardFunction, backend: str) -> None:
        self.reward = reward
        self.backend = backend

    def Score(self, request_iterator, context):
        for req in request_iterator:
            inputs = decode_score_request(req)
            try:
                result = self.reward(inputs)
            except RemoteRewardUnavailable as exc:  # unreachable/timeouts after retries
                raise Unavailable(str(exc)) from None
            except RemoteRewardError as exc:  # the remote refused or answered garbage
                raise Internal(str(exc)) from None
            except ValueError as exc:  # the reward source broke its contract
                raise Internal(f"reward {self.reward.name}: {exc}") from None
            yield reward_pb2.ScoreResponse(
                row_offset=req.row_offset,
                rewards=result.rewards,
                scores=result.scores if result.scores is not None else result.rewards,
                extra_logs=[reward_pb2.ExtraLog(name=k, values=v)
                            for k, v in result.extra_logs.items()],
                step_scores=[reward_pb2.StepScores(values=v)
                             for v in (result.step_scores or [])],
            )

    def GetInfo(self, request, context):
        return common_pb2.ServiceInfo(role="reward", model=self.reward.name,
                                      backend=self.backend)
