"""SFT samples: prompt (not a target) + response (target), or whole text in pretrain mode."""

from __future__ import annotations

import logging
from typing import Any

from quartet.config.data import DataConfig
from quartet.data.sources import RowSource, get_key
from quartet.data.templates import chat_chunks, prompt_response_chunks
from quartet.data.tokenize import TokenizedSample, tokenize_chunks

__all__ = ["build_sft_samples"]

log = logging.getLogger(__name__)


def build_sft_samples(
    sources: list[RowSource], tokenizer: Any, data: DataConfig, pretrain_mode: bool = False
) -> list[TokenizedSample]:
    """Tokenize every row; rows left with no target token after truncation are dropped."""
    out: list[TokenizedSample] = []
    dropped = 0
    for source in sources:
        for row in source.rows:
            prompt = get_key(row, data.input_key, source.name, "--data.input_key")
            if data.multiturn:
                chunks = chat_chunks(tokenizer, prompt)
            else:
                response = (
                    get_key(row, data.output_key, source.name, "--data.output_key")
                    if data.output_key is not None and (not pretrain_mode or data.output_key in row)
                    else ""
                )
                chunks = prompt_response_chunks(
                    tokenizer, prompt, response, data.apply_chat_template, data.input_template,
                    slots=row, where=source.name,
                )
            sample = tokenize_chunks(tokenizer, chunks, data.max_len, all_targets=pretrain_mode)
            if sample.num_targets == 0:
                dropped += 1
                continue
            out.append(sample)
    if dropped:
        log.warning("dropped %d SFT rows with no response token within --data.max_len %d",
                    dropped, data.max_len)
    return out
