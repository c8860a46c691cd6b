"""One engine of each backend per test module (vLLM on CPU starts in seconds in-process,
but importing it costs ~15 s)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def hf_generator(tiny_model_path):
    from quartet.engines.generation.hf_generator import HFGenerator

    g = HFGenerator(str(tiny_model_path), dtype="float32", max_model_len=256)
    yield g
    g.close()


@pytest.fixture(scope="module")
def vllm_generator(tiny_model_path):
    pytest.importorskip("vllm")
    from quartet.engines.generation.vllm_generator import VllmGenerator

    affinity = os.sched_getaffinity(0)
    g = VllmGenerator(str(tiny_model_path), dtype="float32", max_model_len=256,
                      kv_cache_bytes=256 << 20, multiprocess=False)
    # vLLM's CPU worker pins this process to its compute core; give other tests all cores.
    os.sched_setaffinity(0, affinity)
    yield g
    g.close()  # also tears down the torch.distributed state vLLM set up in this process


@pytest.fixture(params=["hf", "vllm"])
def generator(request):
    return request.getfixturevalue(f"{request.param}_generator")


@pytest.fixture(scope="session")
def hf_reference(tiny_model_path):
    """The plain transformers model: the reference for greedy output and log-probs."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path), dtype=torch.float32)
    return model.eval()
