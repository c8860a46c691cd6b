"""A process reward model (trained by ``train_prm``) as a reward source with per-step scores.

Each response is cut into steps: where the response already holds the PRM's placeholder token,
each placeholder ends a step; otherwise each non-empty line is a step and the placeholder is
appended to it (Math-Shepherd's convention). The step score is the probability of the first
(good) reward token at the placeholder; the reward of the response is its lowest step score
(a solution is as good as its worst step).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from quartet.codec.dtypes import float_dtype
from quartet.rewards.base import RewardInputs, RewardResult

__all__ = ["PRM_CONFIG_FILE", "ProcessReward", "split_steps"]

PRM_CONFIG_FILE = "prm_config.json"
"""Written by train_prm next to the model: ``{placeholder_token, reward_tokens}``."""


def split_steps(response: str, placeholder: str) -> str:
    """``response`` with a placeholder after every step (unchanged if it already has some)."""
    if placeholder in response:
        return response
    lines = [line for line in response.split("\n") if line.strip()]
    return "\n".join(f"{line} {placeholder}" for line in lines) if lines else f" {placeholder}"


class ProcessReward:
    def __init__(self, model_path: str, dtype: str = "float32", device: str | None = None,
                 micro_batch_size: int = 8, max_len: int = 2048) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from quartet.engines.frozen_model import default_device, load_frozen

        config_path = Path(model_path) / PRM_CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: --prm-model expects a "
                                    "directory written by train_prm")
        config = json.loads(config_path.read_text())
        self.name = f"prm:{model_path}"
        self.placeholder = config["placeholder_token"]
        self.device = torch.device(device) if device else default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        encode = lambda t: self.tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
        self.placeholder_id = encode(self.placeholder)[0]
        self.reward_ids = [encode(t)[0] for t in config["reward_tokens"]]
        self.model = load_frozen(AutoModelForCausalLM, model_path, float_dtype(dtype))
        self.model.to(self.device).eval().requires_grad_(False)
        self.micro_batch_size = micro_batch_size
        self.max_len = max_len
        self._lock = threading.Lock()

    @torch.no_grad()
    def step_scores(self, texts: list[str]) -> list[list[float]]:
        """P(good) at each placeholder of each text (texts already hold placeholders)."""
        out: list[list[float]] = []
        pad = self.tokenizer.pad_token_id or 0
        for s in range(0, len(texts), self.micro_batch_size):
            rows = [self.tokenizer(t)["input_ids"][: self.max_len]
                    for t in texts[s:s + self.micro_batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            logits = self.model(input_ids=ids.to(self.device),
                                attention_mask=mask.to(self.device)).logits.float()
            probs = torch.softmax(logits[..., self.reward_ids], dim=-1)[..., 0].cpu()
            for i, r in enumerate(rows):
                at = [t for t in range(len(r)) if r[t] == self.placeholder_id]
                out.append([float(probs[i, t]) for t in at])
        return out

    def __call__(self, inputs: RewardInputs) -> RewardResult:
        prompts = inputs.prompts or [""] * len(inputs)
        responses = inputs.responses or [q[len(p):] for q, p in zip(inputs.queries, prompts,
                                                                    strict=True)]
        texts = [p + split_steps(r, self.placeholder)
                 for p, r in zip(prompts, responses, strict=True)]
        with self._lock:
            steps = self.step_scores(texts)
        rewards = [min(s) if s else 0.0 for s in steps]
        return RewardResult(rewards, scores=rewards, step_scores=steps)
