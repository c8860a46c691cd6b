"""Model loading: packed == unpacked, value head, attention fallback, LoRA and QLoRA guards."""

from __future__ import annotations

import logging

import pytest
import torch

from quartet.config import DeepSpeedConfig, LoraConfig, ModelConfig
from quartet.data import TokenizedSample, collate, packed_causal_mask
from quartet.models import (
    ModelLoadError,
    forward_inputs,
    load_causal_lm,
    load_value_model,
    resolve_attn_implementation,
)

SAMPLES = [TokenizedSample([1, 40, 41, 42, 43, 44, 2], [0] * 7),
           TokenizedSample([1, 50, 2], [0] * 3),
           TokenizedSample([60], [0]),
           TokenizedSample([1, 70, 71, 72, 2], [0] * 5)]


@pytest.fixture(scope="module")
def model_cfg(tiny_model_path):
    return ModelConfig(model_name_or_path=str(tiny_model_path))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_equal_unpacked(model_cfg, impl):
    lm = load_causal_lm(model_cfg, DeepSpeedConfig(attn_implementation=impl)).eval()
    padded, packed = collate(SAMPLES, 0), collate(SAMPLES, 0, packed=True)
    with torch.no_grad():
        a = lm(**forward_inputs(padded, impl, torch.float32)).logits
        b = lm(**forward_inputs(packed, impl, torch.float32)).logits
        naive = lm(input_ids=packed.input_ids).logits  # one long causal row, no mask
    assert torch.allclose(a[padded.attention_mask.bool()], b[0], atol=1e-5)
    assert not torch.allclose(naive[0], b[0], atol=1e-3)  # the mask is what keeps them apart


def test_value_model_scores_packed_equal_unpacked(model_cfg):
    vm = load_value_model(model_cfg, DeepSpeedConfig()).eval()
    with torch.no_grad():
        a = vm.scores(collate(SAMPLES, 0))
        b = vm.scores(collate(SAMPLES, 0, packed=True))
    assert a.shape == (4,) and torch.allclose(a, b, atol=1e-5)
    assert hasattr(vm, "score") and hasattr(vm, "model")


def test_value_head_prefix_is_configurable(model_cfg):
    vm = load_value_model(model_cfg, DeepSpeedConfig(value_head_prefix="value_head"))
    assert "value_head.weight" in dict(vm.named_parameters())


def test_packed_mask_is_block_diagonal_causal():
    mask = packed_causal_mask([2, 1], torch.float32)[0, 0]
    allowed = (mask == 0).int().tolist()
    assert allowed == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_flash_attention_falls_back_to_sdpa_with_warning(caplog):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with caplog.at_level(logging.WARNING):
        assert resolve_attn_implementation("flash_attention_2") == "sdpa"
    assert "falling back to sdpa" in caplog.text
    assert "[N, N]" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_attn_implementation("flash_attention_2", packing=True) == "sdpa"
    # with packed samples the warning names the dense-mask cost of the fallback
    assert "falling back to sdpa" in caplog.text and "dense [N, N]" in caplog.text


def test_qlora_on_cpu_is_a_clear_error(model_cfg):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    ds = DeepSpeedConfig(load_in_4bit=True, lora=LoraConfig(rank=4))
    with pytest.raises(ModelLoadError, match="CUDA GPU and the bitsandbytes"):
        load_causal_lm(model_cfg, ds)


def test_lora_trains_adapters_only(model_cfg):
    lm = load_causal_lm(model_cfg, DeepSpeedConfig(lora=LoraConfig(rank=4)))
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    vm = load_value_model(model_cfg, DeepSpeedConfig(lora=LoraConfig(rank=4)))
    trainable = [n for n, p in vm.named_parameters() if p.requires_grad]
    assert "score.weight" in trainable
    assert all("lora_" in n or n == "score.weight" for n in trainable)


def test_gradient_checkpointing_gives_same_gradients(model_cfg):
    batch = collate(SAMPLES, 0)
    grads = []
    for enabled in (False, True):
        cfg = ModelConfig(model_name_or_path=model_cfg.model_name_or_path,
                          gradient_checkpointing_enable=enabled)
        lm = load_causal_lm(cfg, DeepSpeedConfig()).train()
        lm(**forward_inputs(batch, "sdpa", torch.float32)).logits.sum().backward()
        grads.append(lm.model.embed_tokens.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-4)
