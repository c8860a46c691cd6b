"""The critic role's domain object: a value model on DeepSpeed, usually initialised from a
reward model (the seed's recommended practice), with clipped value-loss steps."""

from __future__ import annotations

import torch

from quartet.codec.batches import RowBatch
from quartet.launch.threads import phase_threads
from quartet.ppo.role_config import TrainingRoleConfig
from quartet.ppo.training_role import TrainingRole
from quartet.ppo.updates import ValueUpdater


class Critic(TrainingRole):
    kind = "value"
    role_name = "critic"

    def __init__(self, cfg: TrainingRoleConfig) -> None:
        super().__init__(cfg)
        self.updater = ValueUpdater(self.engine, self.pad_id, cfg.train.micro_batch_size,
                                    self.rows_per_rank, packed=cfg.ds.packing_samples)

    def values(self, batch: RowBatch) -> list[torch.Tensor]:
        with self.lock:
            return self.ranks.scatter_rows(self, "shard_values", batch)

    def shard_values(self, batch: RowBatch) -> list[torch.Tensor]:
        with phase_threads("score"):
            return self.updater.values(batch)

