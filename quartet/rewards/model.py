"""A sequence-regression reward model (e.g. one trained by `train_rm`).

Loaded with `AutoModelForSequenceClassification(num_labels=1)`; the reward of a sample is
the head's output at its last non-pad token, as in training.
"""

from __future__ import annotations

import threading

import torch

from quartet.codec.dtypes import float_dtype
from quartet.rewards.base import RewardInputs, RewardResult


class SequenceRegressionReward:
    def __init__(self, model_path: str, dtype: str = "float32", device: str | None = None,
                 micro_batch_size: int = 8, max_len: int = 2048,
                 use_token_ids: bool = False, offload: bool = False) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from quartet.engines.frozen_model import default_device, load_frozen
        from quartet.engines.inference_engine import InferenceEngine

        self.name = model_path
        self.device = torch.device(device) if device else default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = float_dtype(dtype)
        model = load_frozen(AutoModelForSequenceClassification, model_path, torch_dtype,
                            num_labels=1)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        # Offload (keep on CPU between calls) matters only with an accelerator.
        self.engine = InferenceEngine(model, self.device, torch_dtype, "sdpa",
                                      offload=offload and self.device.type != "cpu")
        self.micro_batch_size = micro_batch_size
        self.max_len = max_len
        self.use_token_ids = use_token_ids
        self._lock = threading.Lock()

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

    def __call__(self, inputs: RewardInputs) -> RewardResult:
        if self.use_token_ids and inputs.batch is not None and len(inputs.batch):
            rows = inputs.batch.rows
        else:
            rows = [
                torch.tensor(self.tokenizer(q, add_special_tokens=False)["input_ids"][
                    -self.max_len:] or [self.tokenizer.pad_token_id])
                for q in inputs.queries
            ]
        with self._lock:
            rewards = self._score_ids(rows)
        return RewardResult(rewards)
