"""A vLLM CPU engine that released its weights and KV cache after a generate phase samples,
once a weight update refilled them, exactly what it samples without the release; Generate in
between is refused with an error that says what to do.

The model ties its LM head to the embedding, as SmolLM2 (the benchmark's model) does: the
tied layer is the one vLLM's reload does not re-pack by itself (`vllm_cpu_weights`)."""

from __future__ import annotations

import os

import pytest
import torch

from quartet.engines.generation import RolloutEngine
from quartet.serving.errors import FailedPrecondition
from quartet.types import SamplingConfig
from quartet.weightsync import specs_of

PROMPTS = [[1, 50, 60, 70], [1, 51], [1, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89]]
SAMPLING = SamplingConfig(n=4, temperature=1.0, max_new_tokens=16, seed=1234, logprobs=True)


@pytest.fixture(scope="module")
def tied_model_path():
    from quartet.testing import tiny_model_dir

    return tiny_model_dir(name="tiny-llama-tied", tie_word_embeddings=True)


@pytest.fixture(scope="module")
def engine(tied_model_path):
    pytest.importorskip("vllm")
    if torch.cuda.is_available():
        pytest.skip("the CPU release path; on GPU vLLM's own sleep level 2 runs")
    from quartet.engines.generation.vllm_generator import VllmGenerator

    affinity = os.sched_getaffinity(0)
    g = VllmGenerator(str(tied_model_path), dtype="float32", max_model_len=256,
                      kv_cache_bytes=64 << 20, multiprocess=False, enforce_eager=True)
    os.sched_setaffinity(0, affinity)
    yield RolloutEngine(g, enable_release=True)
    g.close()


def _samples(engine: RolloutEngine):
    outs = engine.generate(PROMPTS, SAMPLING).collect()
    return [[(s.token_ids, s.logprobs) for s in o.samples] for o in outs]


def _trained(path):
    from safetensors.torch import load_file

    original = load_file(str(path / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    return original, {k: v + 0.05 * torch.randn(v.shape, generator=g)
                      for k, v in original.items()}


def test_a_tied_lm_head_samples_from_the_synced_weights(engine, tied_model_path):
    from transformers import AutoModelForCausalLM

    _, trained = _trained(tied_model_path)
    engine.push_weights(1, specs_of(trained), trained.items())
    hf = AutoModelForCausalLM.from_pretrained(str(tied_model_path), dtype=torch.float32)
    hf.load_state_dict(trained, strict=False)
    hf.tie_weights()
    prompt = PROMPTS[0]
    sample = engine.generate([prompt], SamplingConfig(temperature=1.0, max_new_tokens=8,
                                                      seed=5, logprobs=True)
                             ).collect()[0].samples[0]
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + sample.token_ids])).logits[0]
    want = logits[len(prompt) - 1 : -1].log_softmax(-1).gather(
        -1, torch.tensor(sample.token_ids)[:, None])[:, 0]
    # before the re-pack the LM head kept its starting weights: 1.0 off
    assert torch.tensor(sample.logprobs) == pytest.approx(want, abs=1e-4)


def test_tokens_after_release_and_sync_equal_those_without(engine, tied_model_path):
    original, trained = _trained(tied_model_path)
    engine.push_weights(engine.weight_version + 1, specs_of(trained), trained.items())
    kept = _samples(engine)  # the weights stayed in memory

    freed = engine.release_memory()
    assert freed > 64 << 20  # the KV cache and the embedding at least
    assert engine.release_memory() == 0  # released already
    with pytest.raises(FailedPrecondition, match=r"^rollout: the weights and KV cache were "
                                                 r"released .* send one"):
        engine.generate(PROMPTS, SAMPLING)

    engine.push_weights(engine.weight_version + 1, specs_of(trained), trained.items())
    assert _samples(engine) == kept  # tokens and log-probs, exactly

    # and again: a second release/refill cycle, then a change of weights still shows
    engine.release_memory()
    engine.push_weights(engine.weight_version + 1, specs_of(original), original.items())
    assert _samples(engine) != kept


def test_release_is_refused_without_the_flag(tied_model_path, engine):
    plain = RolloutEngine(engine.generator)
    with pytest.raises(FailedPrecondition, match="--enable-sleep"):
        plain.release_memory()
