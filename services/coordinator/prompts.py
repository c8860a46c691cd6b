"""PPO's prompts: the shared loader's rows as the coordinator's `Prompt` (text, tokens,
label; "" without --data.label_key)."""

from __future__ import annotations

from typing import Any

from quartet.data.prompts import PromptData, load_prompt_items
from services.coordinator.rollouts import Prompt


def load_prompts(data: PromptData, tokenizer: Any, prompt_max_len: int,
                 split: str | None = None, dataset: str | None = None,
                 max_samples: int | None = None) -> list[Prompt]:
    """Reads `data.dataset` (or `dataset`); skips prompts longer than prompt_max_len tokens."""
    return [Prompt(item.text, item.tokens, item.label or "")
            for item in load_prompt_items(data, tokenizer, prompt_max_len, dataset=dataset,
                                          split=split, max_samples=max_samples)]
