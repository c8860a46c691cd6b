"""`--backend auto` checks at engine start that vLLM can run the model, else falls back to
HF generate with a warning naming the cause; an explicit `vllm` fails with the cause."""

from __future__ import annotations

import logging
import os

import pytest


@pytest.mark.slow
def test_auto_falls_back_to_hf_when_vllm_cannot_run_the_model(head16_model, caplog):
    pytest.importorskip("vllm")
    from quartet.engines.generation import build_generator
    from quartet.types import SamplingConfig

    affinity = os.sched_getaffinity(0)
    caplog.set_level(logging.WARNING, logger="quartet.generation")
    g = build_generator("auto", str(head16_model), dtype="float32", max_model_len=128,
                        kv_cache_bytes=64 << 20, multiprocess=False, enforce_eager=True)
    os.sched_setaffinity(0, affinity)
    try:
        assert g.backend == "hf"
        assert "vLLM cannot run" in caplog.text and "falling back" in caplog.text
        out = list(g.generate([[1, 5, 6]], SamplingConfig(n=1, temperature=0.0,
                                                          max_new_tokens=3)))
        assert len(out[0].samples[0].token_ids) >= 1
    finally:
        g.close()
