"""The actor role's domain object: policy engine, PPO steps, checkpoints, weight sending."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from quartet.codec.batches import RowBatch
from quartet.engines.scoring import LogProbsResult
from quartet.launch.threads import phase_threads
from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
from quartet.ppo.role_config import TrainingRoleConfig
from quartet.ppo.training_role import TrainingRole
from quartet.ppo.updates import PolicyUpdater
from quartet.serving.errors import FailedPrecondition
from quartet.weightsync import (
    TensorSpec,
    TransferStats,
    WeightGroupConfig,
    WeightSender,
    init_weight_group,
)

log = logging.getLogger("quartet.actor")


class Actor(TrainingRole):
    kind = "causal_lm"

    def __init__(self, cfg: TrainingRoleConfig) -> None:
        super().__init__(cfg)
        self.updater = PolicyUpdater(self.engine, self.pad_id, cfg.train.micro_batch_size,
                                     cfg.train.batch_size, packed=cfg.ds.packing_samples)
        self.sender: WeightSender | None = None
        self.weight_version = 0

    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult:
        with self.lock, phase_threads("score"):
            return self.updater.logprobs(batch, temperature, with_entropy)

    def train_step(self, mb: PolicyMiniBatch, loss: PolicyLossSettings) -> dict[str, float]:
        with self.lock, phase_threads("train"):
            return self.updater.train_step(mb, loss)

    # ---------------------------------------------------------------- weights
    def named_weights(self, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
        """Full parameters by HF name (gathered one at a time under ZeRO-3), cast if asked."""
        for name, t in self.engine.named_parameters_for_export():
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            yield name, t

    def manifest(self, dtype: torch.dtype | None) -> list[TensorSpec]:
        with self.lock:
            return [TensorSpec.of(n, t) for n, t in self.named_weights(dtype)]

    def init_weight_group(self, config: WeightGroupConfig) -> None:
        if config.rank != 0:
            raise FailedPrecondition(f"rank: the actor is rank 0 of the weight group, "
                                     f"got {config.rank}")
        group = init_weight_group(config, self.world.device)
        self.sender = WeightSender(group)

    def broadcast(self, version: int, bucket_bytes: int,
                  dtype: torch.dtype | None) -> TransferStats:
        if self.sender is None:
            raise FailedPrecondition("no weight group: call InitWeightGroup first")
        if version <= self.weight_version:
            raise FailedPrecondition(f"version: {version} is not newer than the last "
                                     f"broadcast version {self.weight_version}")
        with self.lock:
            specs = [TensorSpec.of(n, t) for n, t in self.named_weights(dtype)]
            if bucket_bytes > 0:
                self.sender.bucket_bytes = bucket_bytes
            stats = self.sender.send(version, self.named_weights(dtype), specs)
        self.weight_version = version
        return stats
