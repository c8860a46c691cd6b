"""Prompt datasets for RL: rows → rendered prompt text, its token ids and a label."""

from __future__ import annotations

import logging
from typing import Any

from quartet.data.sources import DataError, get_key, load_rows
from quartet.data.templates import render_prompt
from services.coordinator.rollouts import Prompt

log = logging.getLogger("quartet.coordinator")


def load_prompts(data, tokenizer: Any, prompt_max_len: int, split: str | None = None,
                 dataset: str | None = None, max_samples: int | None = None) -> list[Prompt]:
    """Reads `data.dataset` (or `dataset`); skips prompts longer than prompt_max_len tokens."""
    prompts: list[Prompt] = []
    skipped = 0
    sources = load_rows(dataset or data.dataset, split or data.dataset_split,
                        max_samples or data.max_samples, data.dataset_probs)
    for source in sources:
        for row in source.rows:
            value = get_key(row, data.input_key, source.name, "--data.input_key")
            label = ""
            if data.label_key:
                label = str(get_key(row, data.label_key, source.name, "--data.label_key"))
            text, tokens = render_prompt(tokenizer, value, data.apply_chat_template,
                                         data.input_template)
            if len(tokens) > prompt_max_len:
                skipped += 1
                continue
            prompts.append(Prompt(text, tokens, label))
    if skipped:
        log.warning("skipped %d prompts longer than --rollout.prompt_max_len %d", skipped,
                    prompt_max_len)
    if not prompts:
        raise DataError(f"no usable prompts in {dataset or data.dataset}")
    return prompts
