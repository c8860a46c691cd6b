"""The critic role's domain object: a value model on DeepSpeed, usually initialised from a
reward model (the seed's recommended practice), with clipped value-loss steps."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from quartet.codec.batches import TokenBatch
from quartet.ppo.batch import ValueLossSettings, ValueMiniBatch
from quartet.ppo.role_config import TrainingRoleConfig
from quartet.ppo.updates import ValueUpdater


class Critic:
    def __init__(self, cfg: TrainingRoleConfig) -> None:
        from quartet.engines.distributed import init_distributed
        from quartet.engines.train_engine import TrainEngine
        from quartet.models.loading import load_tokenizer

        torch.manual_seed(cfg.train.seed)
        self.cfg = cfg
        self.world = init_distributed()
        self.engine = TrainEngine.value_model(
            cfg.model, cfg.ds, cfg.optim, cfg.adam, cfg.muon,
            global_batch=cfg.train.batch_size, micro_batch=cfg.train.micro_batch_size,
            total_steps=cfg.train.total_steps, world=self.world, seed=cfg.train.seed,
        )
        self.tokenizer = load_tokenizer(cfg.model)
        hf_config = self.engine.module.config
        self.vocab_size = int(hf_config.vocab_size)
        self.max_len = int(getattr(hf_config, "max_position_embeddings", 1 << 30))
        self.updater = ValueUpdater(self.engine, int(self.tokenizer.pad_token_id),
                                    cfg.train.micro_batch_size, cfg.train.batch_size,
                                    packed=cfg.ds.packing_samples)
        self.lock = threading.Lock()

    @property
    def global_step(self) -> int:
        return self.engine.global_step

    def values(self, batch: TokenBatch) -> list[torch.Tensor]:
        with self.lock:
            return self.updater.values(batch)

    def train_step(self, mb: ValueMiniBatch, loss: ValueLossSettings) -> dict[str, float]:
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
