"""Preference pairs: (prompt + chosen, prompt + rejected), optional margin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quartet.config.data import DataConfig
from quartet.data.sources import RowSource, get_key
from quartet.data.templates import prompt_response_chunks
from quartet.data.tokenize import TokenizedSample, tokenize_chunks

__all__ = ["PreferenceSample", "build_preference_samples"]


@dataclass(frozen=True)
class PreferenceSample:
    """One pair. Target masks cover the responses (DPO sums log-probs over them)."""

    chosen: TokenizedSample
    rejected: TokenizedSample
    margin: float = 0.0


def build_preference_samples(
    sources: list[RowSource], tokenizer: Any, data: DataConfig, with_margin: bool = False
) -> list[PreferenceSample]:
    """Tokenize every pair. Sequences end in EOS even when truncated (the RM scores there)."""
    out = []
    for source in sources:
        for row in source.rows:
            prompt_key = data.prompt_key or data.input_key
            prompt = row.get(prompt_key)
            if data.prompt_key is not None:
                prompt = get_key(row, data.prompt_key, source.name, "--data.prompt_key")
            sides = []
            for key, flag in ((data.chosen_key, "--data.chosen_key"),
                              (data.rejected_key, "--data.rejected_key")):
                response = get_key(row, key, source.name, flag)
                chunks = prompt_response_chunks(
                    tokenizer, prompt, response, data.apply_chat_template, data.input_template
                )
                sides.append(tokenize_chunks(tokenizer, chunks, data.max_len, force_eos_last=True))
            margin = (
                float(get_key(row, data.margin_key, source.name, "--data.margin_key"))
                if with_margin else 0.0
            )
            out.append(PreferenceSample(sides[0], sides[1], margin))
    return out
