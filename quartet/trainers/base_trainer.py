"""The loop every non-RL trainer shares: data order, accumulation, logging, eval, checkpoints.

A trainer subclass provides three things: how rows become samples, which engine(s) to build,
and the loss of a micro-batch (computed with :mod:`quartet.algos`). Everything about *when*
(steps, epochs, resume position, evaluation and checkpoint cadence) lives here once.
"""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from quartet.config.base import config_to_dict
from quartet.config.jobs import TrainerJobConfig
from quartet.data.sampler import MicroBatchPlan
from quartet.data.sources import RowSource, load_rows
from quartet.engines.distributed import World
from quartet.engines.train_engine import TrainEngine
from quartet.models.loading import load_tokenizer
from quartet.tracking.tracker import Tracker

__all__ = ["BaseTrainer", "LossOutput", "set_seed"]

log = logging.getLogger(__name__)

LossOutput = tuple[Tensor, dict[str, float], int]
"""(loss to backpropagate, metrics to average, number of tokens processed)."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class BaseTrainer(ABC):
    """Runs ``job`` on this rank's share of the data; call :meth:`fit`."""

    name = "trainer"

    def __init__(self, job: TrainerJobConfig, world: World) -> None:
        self.job = job
        self.world = world
        set_seed(job.train.seed)
        self.tokenizer = load_tokenizer(job.model, job.data.tokenizer_chat_template)
        data = job.data
        self.train_samples = self.build_samples(
            load_rows(data.dataset, data.dataset_split, data.max_samples, data.dataset_probs)
        )
        self.eval_samples: list[Any] = []
        if job.eval.dataset:
            self.eval_samples = self.build_samples(
                load_rows(job.eval.dataset, job.eval.split, job.eval.max_samples)
            )
        self.plan = MicroBatchPlan(len(self.train_samples), job.train.batch_size,
                                   job.train.micro_batch_size, world.rank, world.world_size,
                                   job.train.seed)
        self.total_steps = self.plan.steps_per_epoch * job.train.max_epochs
        self.engine = self.build_engine()

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def build_samples(self, sources: list[RowSource]) -> list[Any]:
        """Tokenized samples from rows."""

    @abstractmethod
    def build_engine(self) -> TrainEngine:
        """The trainable engine (``self.total_steps`` is known)."""

    @abstractmethod
    def compute_loss(self, samples: list[Any]) -> LossOutput:
        """Loss of one micro-batch, differentiable through ``self.engine``."""

    @abstractmethod
    def eval_sums(self, samples: list[Any]) -> dict[str, float]:
        """Sums of eval metrics over ``samples`` plus ``count``; no gradients."""

    # ------------------------------------------------------------------ helpers
    def engine_args(self) -> dict[str, Any]:
        j = self.job
        return {"global_batch": j.train.batch_size, "micro_batch": j.train.micro_batch_size,
                "total_steps": self.total_steps, "world": self.world}

    def _all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.world.world_size == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.world.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def _all_reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        return {k: v * self.world.world_size for k, v in self._all_reduce_mean(values).items()}

    def evaluate(self) -> dict[str, float]:
        """Metrics over the whole eval set (sharded over ranks, reduced)."""
        if not self.eval_samples:
            return {}
        self.engine.eval()
        mine = self.eval_samples[self.world.rank::self.world.world_size]
        micro = self.job.train.micro_batch_size
        sums: dict[str, float] = defaultdict(float)
        with torch.no_grad():
            for i in range(0, len(mine), micro):
                for k, v in self.eval_sums(mine[i:i + micro]).items():
                    sums[k] += v
        keys = sorted(set(sums) | {"count"})
        total = self._all_reduce_sum({k: sums.get(k, 0.0) for k in keys})
        count = max(total.pop("count"), 1.0)
        self.engine.train()
        return {f"eval/{k}": v / count for k, v in total.items()}

    def _checkpoint(self, epoch: int, micro_in_epoch: int) -> None:
        ckpt = self.job.ckpt
        if ckpt.disable_ds:
            return
        state = {"epoch": epoch, "micro_in_epoch": micro_in_epoch,
                 "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}
        tag = f"global_step{self.engine.global_step}"
        self.engine.save_checkpoint(ckpt.ds_path, tag, state, max_num=ckpt.max_num,
                                    max_mem_gb=ckpt.max_mem)
        if ckpt.save_hf:
            self.engine.save_hf(Path(ckpt.ds_path) / f"{tag}_hf", self.tokenizer)

    def _resume(self) -> tuple[int, int]:
        if not self.job.ckpt.load_enable:
            return 0, 0
        state = self.engine.load_checkpoint(self.job.ckpt.ds_path)
        if state is None:
            log.info("no checkpoint in %s; starting fresh", self.job.ckpt.ds_path)
            return 0, 0
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        log.info("resumed at step %d (epoch %d, micro-batch %d)", self.engine.global_step,
                 state["epoch"], state["micro_in_epoch"])
        return int(state["epoch"]), int(state["micro_in_epoch"])

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict[str, Any]]:
        """Train; returns the logged metric history (rank 0; other ranks get [])."""
        job = self.job
        start_epoch, start_micro = self._resume()
        tracker = Tracker(job.logger, job.ckpt.output_dir,
                          f"{self.name}", self.total_steps, self.engine.global_step,
                          self.world.is_main, config_to_dict(job))
        if self.eval_samples and self.engine.global_step == 0:
            tracker.log(self.evaluate(), 0)
        self.engine.train()
        accum = self.plan.accum_steps
        stop = False
        sums: dict[str, float] = defaultdict(float)
        tokens = 0
        tic = time.time()
        for epoch in range(start_epoch, job.train.max_epochs):
            skip = start_micro if epoch == start_epoch else 0
            micro_in_epoch = skip
            for indices in self.plan.epoch(epoch, skip):
                samples = [self.train_samples[i] for i in indices]
                loss, metrics, n_tokens = self.compute_loss(samples)
                self.engine.backward(loss)
                info = self.engine.step()
                micro_in_epoch += 1
                tokens += n_tokens
                for k, v in metrics.items():
                    sums[k] += v / accum
                if info is None:
                    continue
                step = info.step
                elapsed = max(time.time() - tic, 1e-9)
                stats = self._all_reduce_mean(dict(sums))
                stats.update(lr=info.lr, grad_norm=info.grad_norm, epoch=epoch,
                             tokens_per_s=tokens * self.world.world_size / elapsed,
                             samples_per_s=job.train.batch_size / elapsed)
                tracker.advance(stats)
                if step % job.logger.logging_steps == 0:
                    tracker.log(stats, step)
                sums.clear()
                tokens = 0
                at_end = micro_in_epoch == self.plan.micro_batches_per_epoch
                if job.eval.steps > 0 and step % job.eval.steps == 0:
                    tracker.log(self.evaluate(), step)
                stop = step == job.train.stop_after_steps
                save = job.ckpt.save_steps > 0 and step % job.ckpt.save_steps == 0
                if save or stop:
                    next_epoch, next_micro = (epoch + 1, 0) if at_end else (epoch, micro_in_epoch)
                    self._checkpoint(next_epoch, next_micro)
                tic = time.time()
                if stop:
                    break
            if stop:
                break
        if not stop:
            if self.eval_samples and (job.eval.steps < 0
                                      or self.engine.global_step % job.eval.steps != 0):
                tracker.log(self.evaluate(), self.engine.global_step)
            self.engine.save_hf(job.ckpt.output_dir, self.tokenizer)
        tracker.close()
        return tracker.history
