"""The actor role's domain object: policy engine, PPO steps, checkpoints, weight sending.

One lock serialises engine use: gRPC serves requests on a thread pool, and a LogProbs call
must not interleave with a TrainStep's forward/backward.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from quartet.codec.batches import TokenBatch
from quartet.engines.scoring import LogProbsResult
from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
from quartet.ppo.role_config import TrainingRoleConfig
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


class Actor:
    def __init__(self, cfg: TrainingRoleConfig) -> None:
        from quartet.engines.distributed import init_distributed
        from quartet.engines.train_engine import TrainEngine
        from quartet.models.loading import load_tokenizer

        torch.manual_seed(cfg.train.seed)
        self.cfg = cfg
        self.world = init_distributed()
        self.engine = TrainEngine.causal_lm(
            cfg.model, cfg.ds, cfg.optim, cfg.adam, cfg.muon,
            global_batch=cfg.train.batch_size, micro_batch=cfg.train.micro_batch_size,
            total_steps=cfg.train.total_steps, world=self.world,
        )
        self.tokenizer = load_tokenizer(cfg.model)
        hf_config = self.engine.module.config
        self.vocab_size = int(hf_config.vocab_size)
        self.max_len = int(getattr(hf_config, "max_position_embeddings", 1 << 30))
        self.updater = PolicyUpdater(self.engine, int(self.tokenizer.pad_token_id),
                                     cfg.train.micro_batch_size, cfg.train.batch_size,
                                     packed=cfg.ds.packing_samples)
        self.lock = threading.Lock()
        self.sender: WeightSender | None = None
        self.weight_version = 0

    @property
    def global_step(self) -> int:
        return self.engine.global_step

    def logprobs(self, batch: TokenBatch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult:
        with self.lock:
            return self.updater.logprobs(batch, temperature, with_entropy)

    def train_step(self, mb: PolicyMiniBatch, loss: PolicyLossSettings) -> dict[str, float]:
        with self.lock:
            return self.updater.train_step(mb, loss)

    def save(self, output_dir: str, tag: str, hf_export: bool) -> tuple[str, str]:
        tag = tag or f"global_step{self.global_step}"
        out = Path(output_dir)
        with self.lock:
            self.engine.save_checkpoint(out / "deepspeed", tag)
            hf_dir = ""
            if hf_export:
                hf_dir = str(out / "hf" / tag)
                self.engine.save_hf(hf_dir, tokenizer=self.tokenizer)
        return hf_dir, str(out / "deepspeed" / tag)

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
