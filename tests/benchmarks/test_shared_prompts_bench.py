"""`python -m bench shared_prompts` builds GRPO-shaped rows: each prompt's samples
consecutive, sharing the prompt tokens, so a micro-batch of whole groups shares them."""

from __future__ import annotations

from bench.shared_prompts import grpo_rows
from quartet.engines.scoring import to_model_layout


def test_rows_come_in_prompt_groups(tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    rows = grpo_rows(tokenizer, prompts=3, samples=2, response_tokens=5)
    assert len(rows) == 6 and rows.response_lengths() == [5] * 6
    for g in range(3):
        a, b = rows.rows[2 * g], rows.rows[2 * g + 1]
        p = rows.prompt_lengths[2 * g]
        assert rows.prompt_lengths[2 * g + 1] == p and a[:p].tolist() == b[:p].tolist()
    layout = to_model_layout(rows, tokenizer.pad_token_id or 0, share_prefix=True)
    assert layout.model_batch.input_ids.shape[0] == 3
