"""Prompt datasets for generation: rows → rendered prompt text, token ids, label.

One loader for every job that samples from prompts (PPO's coordinator, batch inference,
the iterative methods), so `--data.*` means the same thing in each of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from quartet.data.sources import DataError, get_key, load_rows
from quartet.data.templates import render_prompt

__all__ = ["PromptData", "PromptItem", "load_prompt_items"]

log = logging.getLogger("quartet.data")


class PromptData(Protocol):
    """The `--data.*` fields a prompt loader reads."""

    dataset: str
    dataset_split: str
    dataset_probs: str | None
    max_samples: int | None
    input_key: str
    label_key: str | None
    apply_chat_template: bool
    input_template: str | None


@dataclass(frozen=True)
class PromptItem:
    """One prompt: rendered text and token ids, the raw row value, its label (None without
    ``--data.label_key``), its row."""

    text: str
    tokens: list[int]
    raw: Any
    label: str | None
    row: dict[str, Any]


def load_prompt_items(data: PromptData, tokenizer: Any, prompt_max_len: int,
                      dataset: str | None = None, split: str | None = None,
                      max_samples: int | None = None,
                      condition: Mapping[str, Any] | None = None) -> list[PromptItem]:
    """Rows of ``dataset`` (default ``--data.dataset``) as prompts, skipping (with a warning)
    those longer than ``prompt_max_len`` tokens. Named template slots are filled from the
    row, overridden by ``condition``. ``--data.dataset_probs`` weighs ``--data.dataset``
    only, never another dataset named here (an evaluation set)."""
    items: list[PromptItem] = []
    skipped = 0
    name = dataset or data.dataset
    for source in load_rows(name, split or data.dataset_split, max_samples or data.max_samples,
                            None if dataset else data.dataset_probs):
        for row in source.rows:
            value = get_key(row, data.input_key, source.name, "--data.input_key")
            label = None
            if data.label_key:
                label = str(get_key(row, data.label_key, source.name, "--data.label_key"))
            text, tokens = render_prompt(tokenizer, value, data.apply_chat_template,
                                         data.input_template, {**row, **(condition or {})},
                                         source.name)
            if len(tokens) > prompt_max_len:
                skipped += 1
                continue
            items.append(PromptItem(text, tokens, value, label, row))
    if skipped:
        log.warning("skipped %d prompts longer than --rollout.prompt_max_len %d", skipped,
                    prompt_max_len)
    if not items:
        raise DataError(f"no usable prompts in {name}")
    return items
