"""Client of the reward role (any server implementing quartet.v1.Reward)."""

from __future__ import annotations

from quartet.clients.base import GrpcRoleClient
from quartet.clients.request_streams import unary_when_single
from quartet.codec import encode_token_batch
from quartet.rewards.base import RewardInputs, RewardResult
from quartet.v1 import common_pb2, reward_pb2, reward_pb2_grpc

ROWS_PER_SLICE = 256


class GrpcRewardClient(GrpcRoleClient):
    role = "reward"

    def __init__(self, address: str, send_token_ids: bool = False, **kwargs) -> None:
        super().__init__(address, **kwargs)
        self.stub = unary_when_single(reward_pb2_grpc.RewardStub(self.channel), self.channel,
                                      reward_pb2.DESCRIPTOR.services_by_name["Reward"])
        self.send_token_ids = send_token_ids
        self.name = f"reward@{address}"

    def _requests(self, inputs: RewardInputs, header: common_pb2.RequestHeader):
        n = len(inputs)
        for s in range(0, n, ROWS_PER_SLICE):
            e = min(s + ROWS_PER_SLICE, n)
            req = reward_pb2.ScoreRequest(
                header=header, queries=inputs.queries[s:e], prompts=inputs.prompts[s:e],
                responses=inputs.responses[s:e], labels=inputs.labels[s:e], row_offset=s,
            )
            if self.send_token_ids and inputs.batch is not None:
                req.batch.CopyFrom(encode_token_batch(inputs.batch.slice(s, e)))
            yield req

    def score(self, inputs: RewardInputs,
              header: common_pb2.RequestHeader | None = None) -> RewardResult:
        responses = self._stream("Score", self.stub.Score,
                                 self._requests(inputs, header or common_pb2.RequestHeader()))
        n = len(inputs)
        rewards: list[float | None] = [None] * n
        scores: list[float | None] = [None] * n
        extra: dict[str, list[float]] = {}
        steps: list[list[float]] | None = None
        for r in responses:
            k = len(r.rewards)
            if r.row_offset < 0 or r.row_offset + k > n:
                raise ValueError(f"{self.name}: answered rows [{r.row_offset}, "
                                 f"{r.row_offset + k}) for {n} samples")
            rewards[r.row_offset : r.row_offset + k] = list(r.rewards)
            scores[r.row_offset : r.row_offset + k] = list(r.scores) or list(r.rewards)
            for log in r.extra_logs:
                extra.setdefault(log.name, [0.0] * n)[r.row_offset : r.row_offset + k] = list(
                    log.values)
            if r.step_scores:
                steps = steps if steps is not None else [[] for _ in range(n)]
                steps[r.row_offset : r.row_offset + k] = [list(s.values) for s in r.step_scores]
        if any(v is None for v in rewards):
            raise ValueError(f"{self.name}: returned {sum(v is not None for v in rewards)} "
                             f"rewards for {n} samples")
        return RewardResult(rewards, scores, extra, steps)  # type: ignore[arg-type]

    __call__ = score

    def info(self) -> common_pb2.ServiceInfo:
        return self._info(self.stub.GetInfo)
