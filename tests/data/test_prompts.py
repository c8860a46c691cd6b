"""The one prompt loader shared by PPO, batch inference and the iterative methods."""

import json

import pytest
from transformers import AutoTokenizer

from quartet.config.inference import InferenceDataConfig
from quartet.data.prompts import load_prompt_items
from quartet.data.sources import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_rows_render_with_slots_labels_and_skip_long_ones(tmp_path, tokenizer):
    data = _write(tmp_path / "p.jsonl", [
        {"q": "one plus one", "a": 2, "tier": "easy"},
        {"q": "two " * 200, "a": 4, "tier": "hard"},
        {"q": "three plus one", "a": 4, "tier": "easy"},
    ])
    cfg = InferenceDataConfig(dataset=data, input_key="q", label_key="a",
                              input_template="[{tier}/{score}] {}")
    items = load_prompt_items(cfg, tokenizer, 64, condition={"score": "9"})
    assert [i.text for i in items] == ["[easy/9] one plus one", "[easy/9] three plus one"]
    assert [i.label for i in items] == ["2", "4"] and items[0].raw == "one plus one"
    assert items[1].tokens == tokenizer("[easy/9] three plus one",
                                        add_special_tokens=False)["input_ids"]
    assert items[0].row["tier"] == "easy"


def test_without_a_label_key_and_nothing_usable(tmp_path, tokenizer):
    data = _write(tmp_path / "p.jsonl", [{"q": "hello there"}])
    cfg = InferenceDataConfig(dataset=data, input_key="q")
    assert load_prompt_items(cfg, tokenizer, 64)[0].label is None
    with pytest.raises(DataError, match="no usable prompts in .*p.jsonl"):
        load_prompt_items(cfg, tokenizer, 1)
    with pytest.raises(DataError, match="--data.input_key"):
        load_prompt_items(InferenceDataConfig(dataset=data, input_key="nope"), tokenizer, 64)


def test_dataset_probs_weigh_the_training_set_not_an_eval_set(tmp_path, tokenizer):
    a = _write(tmp_path / "a.jsonl", [{"q": f"a{i}"} for i in range(8)])
    b = _write(tmp_path / "b.jsonl", [{"q": f"b{i}"} for i in range(8)])
    cfg = InferenceDataConfig(dataset=f"{a},{b}", dataset_probs="0.75,0.25", input_key="q",
                              max_samples=8)
    train = load_prompt_items(cfg, tokenizer, 64)
    assert sum(i.raw.startswith("a") for i in train) == 6
    held_out = load_prompt_items(cfg, tokenizer, 64, dataset=b, max_samples=3)
    assert [i.raw for i in held_out] == ["b0", "b1", "b2"]
