"""A sequence-regression reward model (e.g. one trained by `train_rm`).

Loaded with `AutoModelForSequenceClassification(num_labels=1)`; the reward of a sample is
the head's output at its last non-pad token, as in training.

It is held like the reference (`quartet.engines.frozen_model.FrozenHost`): in the configured
dtype, optionally offloaded between calls, on one rank or on N ranks behind rank 0 — rows
scattered over the ranks and scores gathered in order — with ZeRO-3 sharding the weights.
"""

from __future__ import annotations

import logging
import threading

import torch

from quartet.codec.batches import RowBatch
from quartet.rewards.base import RewardInputs, RewardResult

log = logging.getLogger("quartet.rewards")


class SequenceRegressionReward:
    def __init__(self, model_path: str, dtype: str = "float32", device: str | None = None,
                 micro_batch_size: int = 8, max_len: int = 2048,
                 use_token_ids: bool = False, offload: bool = False,
                 zero_stage: int = 0) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from quartet.engines.frozen_model import FrozenHost

        host = FrozenHost(dtype, device, offload, micro_batch_size, zero_stage)
        self.name = model_path
        self.device = host.device
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = host.load(AutoModelForSequenceClassification, model_path, num_labels=1)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.engine = host.engine(model)
        self.ranks = host.ranks
        self.micro_batch_size = micro_batch_size
        self.max_len = max_len
        self.use_token_ids = use_token_ids
        self._lock = threading.Lock()
        log.info("loaded reward model %s %s", model_path, host.describe())

    @torch.no_grad()
    def _score_ids(self, rows: list[torch.Tensor]) -> list[float]:
        out: list[float] = []
        pad = self.tokenizer.pad_token_id
        for s in range(0, len(rows), self.micro_batch_size):
            chunk = rows[s : s + self.micro_batch_size]
            width = max(r.numel() for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, : r.numel()] = r
                mask[i, : r.numel()] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            with self.engine.placed() as model:
                hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
                last = mask.sum(dim=1) - 1
                picked = hidden[torch.arange(len(chunk), device=self.device), last]
                out.extend(model.score(picked).float().squeeze(-1).cpu().tolist())
        return out

    def shard_scores(self, batch: RowBatch) -> list[float]:
        """This rank's share of a scored batch (run on every rank by `scatter_rows`)."""
        return self._score_ids(batch.rows)

    def __call__(self, inputs: RewardInputs) -> RewardResult:
        if self.use_token_ids and inputs.batch is not None and len(inputs.batch):
            rows = inputs.batch.rows
        else:
            rows = [
                torch.tensor(self.tokenizer(q, add_special_tokens=False)["input_ids"][
                    -self.max_len:] or [self.tokenizer.pad_token_id])
                for q in inputs.queries
            ]
        with self._lock:  # one forward at a time: the server's worker threads share it
            rewards = self.ranks.scatter_rows(self, "shard_scores",
                                              RowBatch(rows, [0] * len(rows)))
        return RewardResult(rewards)

    def serve_worker(self) -> int:
        """Ranks > 0: serve rank 0's fanned-out calls until it stops; the exit code."""
        return self.ranks.serve_worker(self)

    def stop_workers(self) -> None:
        self.ranks.stop()
