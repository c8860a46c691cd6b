"""Prompt rendering with named template slots (conditional SFT) and the errors that name
the slot and the file."""

from __future__ import annotations

import pytest

from quartet.data.sources import DataError
from quartet.data.templates import fill_template, prompt_response_chunks, render_prompt


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))


def test_fill_template_positional_and_named_slots():
    assert fill_template("q {score:.0f}: {}", "hi", {"score": 2.6, "other": 1}) == "q 3: hi"
    assert fill_template("User: {}\n", "hi") == "User: hi\n"
    with pytest.raises(DataError, match=r"slot \{score\} has no value in data\.jsonl; "
                                        r"fields that exist: \['prompt'\]"):
        fill_template("{score} {}", "hi", {"prompt": "hi"}, "data.jsonl")


def test_render_prompt_plain_template_and_chat(tokenizer):
    text, ids = render_prompt(tokenizer, "what is 1 plus 2?", False, "score {score}: {}",
                              {"score": 9})
    assert text == "score 9: what is 1 plus 2?" and ids == tokenizer(text)["input_ids"]
    chat, _ = render_prompt(tokenizer, "hi", True, None)
    assert chat == "<|user|>hi</s><|assistant|>"
    with pytest.raises(DataError, match="must be a string"):
        render_prompt(tokenizer, ["x"], False, None)


def test_sft_chunks_take_slots_from_the_row(tokenizer):
    chunks = prompt_response_chunks(tokenizer, "hi", "yes.", False, "q {score:.0f}: {}",
                                    slots={"score": 1.0})
    assert chunks == [("q 1: hi", False), ("yes.", True)]
