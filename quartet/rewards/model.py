"""A sequence-regression reward model (e.g. one trained by `train_rm`).

Loaded with `AutoModelForSequenceClassification(num_labels=1)`; the reward of a sample is
the head's output at its last non-pad token, as in training.
"""

from __future__ import annotations

import threading

import torch

from quartet.rewards.base import RewardInputs, RewardResult

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SequenceRegressionReward:
    def __init__(self, model_path: str, dtype: str = "float32", device: str | None = None,
                 micro_batch_size: int = 8, max_len: int = 2048,
                 use_token_ids: bool = False) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = model_path
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=1, dtype=DTYPES[dtype]
        ).to(self.device)
        self.model.eval().requires_grad_(False)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
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
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(dim=1) - 1
            picked = hidden[torch.arange(len(chunk), device=self.device), last]
            out.extend(self.model.score(picked).float().squeeze(-1).cpu().tolist())
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
