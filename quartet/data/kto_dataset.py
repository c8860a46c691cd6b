"""KTO samples: one (prompt, response) with a desirable/undesirable flag, plus a mismatched
(prompt, other response) sequence for the KL reference point.

Rows are unpaired ``{prompt, output, label}``; a row with ``chosen``/``rejected`` instead (a
preference pair) becomes one desirable and one undesirable sample. The mismatched sequence of
sample ``i`` pairs its prompt with the response of sample ``i + 1`` (cyclically), fixed at build
time, so the estimate does not depend on the micro-batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quartet.config.methods import LabelledDataConfig
from quartet.data.sources import DataError, RowSource, get_key
from quartet.data.templates import prompt_response_chunks
from quartet.data.tokenize import TokenizedSample, tokenize_chunks

__all__ = ["KTOSample", "build_kto_samples", "parse_desirable"]

_TRUE = {"true", "1", "yes", "desirable", "good", "chosen"}
_FALSE = {"false", "0", "no", "undesirable", "bad", "rejected"}


@dataclass(frozen=True)
class KTOSample:
    """``sequence``: prompt + response (targets on the response); ``kl_sequence``: prompt +
    another sample's response."""

    sequence: TokenizedSample
    kl_sequence: TokenizedSample
    desirable: bool


def parse_desirable(value: Any, where: str) -> bool:
    """A KTO label: bool, 0/1, or one of true/false, desirable/undesirable, good/bad."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DataError(f"{where}: label {value!r} is not a desirable flag (expected true/false, "
                    "1/0, desirable/undesirable)")


def _split(sample: TokenizedSample) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids): the response starts at the first target token."""
    start = sample.target_mask.index(1) if 1 in sample.target_mask else len(sample.input_ids)
    return sample.input_ids[:start], sample.input_ids[start:]


def build_kto_samples(sources: list[RowSource], tokenizer: Any,
                      data: LabelledDataConfig) -> list[KTOSample]:
    """Tokenize every row (pairs split in two) and attach the mismatched KL sequences."""
    items: list[tuple[TokenizedSample, bool]] = []
    prompt_key = data.prompt_key or data.input_key
    prompt_flag = "--data.prompt_key" if data.prompt_key else "--data.input_key"
    for source in sources:
        for index, row in enumerate(source.rows):
            prompt = get_key(row, prompt_key, source.name, prompt_flag)
            if data.label_key in row or data.chosen_key not in row:
                response = get_key(row, data.output_key, source.name, "--data.output_key")
                label = get_key(row, data.label_key, source.name, "--data.label_key")
                where = f"{source.name} row {index} key {data.label_key!r}"
                pairs = [(response, parse_desirable(label, where))]
            else:
                pairs = [(get_key(row, data.chosen_key, source.name, "--data.chosen_key"), True),
                         (get_key(row, data.rejected_key, source.name, "--data.rejected_key"),
                          False)]
            for response, desirable in pairs:
                chunks = prompt_response_chunks(tokenizer, prompt, response,
                                                data.apply_chat_template, data.input_template)
                items.append((tokenize_chunks(tokenizer, chunks, data.max_len), desirable))
    out = []
    for i, (sample, desirable) in enumerate(items):
        prompt, _ = _split(sample)
        _, other = _split(items[(i + 1) % len(items)][0])
        ids = (prompt + other)[: data.max_len]
        mask = ([0] * len(prompt) + [1] * len(other))[: data.max_len]
        out.append(KTOSample(sample, TokenizedSample(ids, mask), desirable))
    return out
