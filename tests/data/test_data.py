"""Rows -> tokens -> batches: masks, templates, errors, packing bookkeeping, data order."""

from __future__ import annotations

import json
import time

import pytest
import torch

from quartet.config import DataConfig, ModelConfig
from quartet.data import (
    DataError,
    MicroBatchPlan,
    build_preference_samples,
    build_sft_samples,
    collate,
    load_rows,
)
from quartet.models import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(ModelConfig(model_name_or_path=str(tiny_model_path)))


def _targets(tok, sample):
    return tok.decode([t for t, m in zip(sample.input_ids, sample.target_mask, strict=True) if m])


def test_sft_masks_prompt_and_appends_eos(tok, tiny_data):
    data = DataConfig(dataset=str(tiny_data["sft"]), input_key="question", output_key="response",
                      input_template="User: {}\nAssistant: ")
    rows = load_rows(data.dataset)
    samples = build_sft_samples(rows, tok, data)
    first = rows[0].rows[0]
    assert _targets(tok, samples[0]) == first["response"] + tok.eos_token
    assert tok.decode(samples[0].input_ids).startswith("User: " + first["question"])


def test_chat_template_and_multiturn_masks(tok, tiny_data):
    data = DataConfig(dataset=str(tiny_data["chat_sft"]), input_key="messages",
                      apply_chat_template=True, multiturn=True)
    sample = build_sft_samples(load_rows(data.dataset), tok, data)[0]
    text = _targets(tok, sample)
    assert text.startswith("the answer is ")
    assert text.count("</s>") == 2 and "you are good." in text and "thanks" not in text
    assert "<|user|>" not in text


def test_pretrain_mode_and_max_len(tok, tiny_data):
    data = DataConfig(dataset=str(tiny_data["sft"]), input_key="question",
                      output_key="response", max_len=6, max_samples=5)
    samples = build_sft_samples(load_rows(data.dataset, max_samples=5), tok, data,
                                pretrain_mode=True)
    assert len(samples) == 5
    assert all(len(s.input_ids) <= 6 and s.target_mask == [0] + [1] * 5 for s in samples)


def test_preference_pairs_end_with_eos(tok, tiny_data):
    data = DataConfig(dataset=str(tiny_data["preference"]), input_key="prompt", max_len=10)
    pairs = build_preference_samples(load_rows(data.dataset), tok, data)
    assert all(p.chosen.input_ids[-1] == tok.eos_token_id for p in pairs)
    assert all(p.rejected.input_ids[-1] == tok.eos_token_id for p in pairs)


def test_missing_key_names_key_file_and_existing_keys(tok, tiny_data):
    data = DataConfig(dataset=str(tiny_data["sft"]), input_key="instruction")
    with pytest.raises(DataError) as err:
        build_sft_samples(load_rows(data.dataset), tok, data)
    message = str(err.value)
    assert "'instruction'" in message and str(tiny_data["sft"]) in message
    assert "['question', 'response']" in message and "--data.input_key" in message


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.time()
    with pytest.raises(DataError, match="offline"):
        load_rows("Open-Orca/OpenOrca")
    assert time.time() - start < 30


def test_parquet_and_json_files(tmp_path):
    import pandas as pd

    rows = [{"input": f"q{i}", "output": f"a{i}"} for i in range(5)]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for name in ("d.parquet", "d.json"):
        assert load_rows(str(tmp_path / name), max_samples=3)[0].rows == rows[:3]


def test_packed_batch_bookkeeping(tok):
    from quartet.data import TokenizedSample

    samples = [TokenizedSample([1, 2, 3], [0, 1, 1]), TokenizedSample([4, 5], [0, 1]),
               TokenizedSample([6], [0])]
    padded, packed = collate(samples, 0), collate(samples, 0, packed=True)
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert packed.input_ids.reshape(-1)[packed.last_index].tolist() == [3, 5, 6]
    assert padded.input_ids.reshape(-1)[padded.last_index].tolist() == [3, 5, 6]
    values = torch.arange(1.0, 7.0)[None]
    _, mask, sids = packed.shifted()
    assert packed.per_sample_sum(values[:, 1:], mask, sids).tolist() == [5.0, 5.0, 0.0]


def test_micro_batch_plan_shards_and_resumes():
    plans = [MicroBatchPlan(20, 8, 2, rank, 2, seed=3) for rank in range(2)]
    assert plans[0].steps_per_epoch == 2 and plans[0].accum_steps == 2
    epoch = [list(p.epoch(0)) for p in plans]
    first_step = sum(epoch[0][:2] + epoch[1][:2], [])
    assert len(set(first_step)) == 8  # ranks cover one global batch without overlap
    assert list(plans[0].epoch(0, skip_micro_batches=3)) == epoch[0][3:]
    assert list(plans[0].epoch(1)) != epoch[0]
