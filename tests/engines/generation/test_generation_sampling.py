"""SamplingConfig and prompt validation, and GenerationStream mechanics (no engine)."""

from __future__ import annotations

import threading

import pytest

from quartet.engines.generation import GenerationStream, resolve_backend, validate_prompts
from quartet.serving.errors import InvalidArgument
from quartet.types import PromptOutput, SampleOutput, SamplingConfig


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "sampling.n: must be in 1..1024, got 0"),
    ({"temperature": -1.0}, "sampling.temperature: must be >= 0, got -1.0"),
    ({"temperature": float("nan")}, "sampling.temperature"),
    ({"top_p": 0.0}, "sampling.top_p: must be in (0, 1], got 0.0"),
    ({"top_p": 1.01}, "sampling.top_p"),
    ({"top_k": -2}, "sampling.top_k"),
    ({"max_new_tokens": 0}, "sampling.max_new_tokens: must be >= 1, got 0"),
    ({"min_new_tokens": 20, "max_new_tokens": 10}, "sampling.min_new_tokens"),
    ({"stop": ("ok", "")}, "sampling.stop[1]: must not be empty"),
])
def test_invalid_sampling_names_the_field(kwargs, message):
    with pytest.raises(InvalidArgument) as info:
        SamplingConfig(**kwargs)
    assert str(info.value).startswith(message)


def test_valid_sampling_and_seeds():
    s = SamplingConfig(n=3, temperature=0.0, top_k=0, seed=10)
    assert s.greedy and s.top_k_or_none is None
    assert [s.sample_seed(p, k) for p in range(2) for k in range(3)] == list(range(10, 16))
    assert SamplingConfig().sample_seed(0, 0) is None


def test_validate_prompts():
    validate_prompts([[1, 2], [3]], vocab_size=10, max_model_len=8)
    for prompts, message in [
        ([], "prompt_tokens: must hold at least one prompt"),
        ([[1], []], "prompt_tokens[1]: empty prompt"),
        ([[1] * 8], "prompt_tokens[0]: 8 tokens leave no room"),
        ([[1, -1]], "prompt_tokens[0]: token id -1 is outside the vocabulary [0, 10)"),
        ([[1, 10]], "prompt_tokens[0]: token id 10 is outside"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            validate_prompts(prompts, vocab_size=10, max_model_len=8)
        assert str(info.value).startswith(message)


def test_validate_prompts_with_max_new_tokens_rejects_what_would_be_cut_short():
    validate_prompts([[1] * 4], vocab_size=10, max_model_len=8, max_new_tokens=4)
    with pytest.raises(InvalidArgument, match=r"prompt_tokens\[1\]: 5 tokens \+ max_new_tokens 4 "
                                              r"exceed this rollout's context of 8 tokens"):
        validate_prompts([[1] * 4, [1] * 5], vocab_size=10, max_model_len=8, max_new_tokens=4)


def test_resolve_backend():
    assert resolve_backend("hf") == "hf"
    assert resolve_backend("auto") in ("vllm", "hf")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("tgi")


def _out(i):
    return PromptOutput(i, [1], [SampleOutput([2], "length")])


def test_stream_delivers_then_ends_and_runs_callbacks_once():
    done = []
    stream = GenerationStream(2)
    stream.add_done_callback(lambda: done.append(1))
    stream.set_transform(lambda o: PromptOutput(o.prompt_index, o.prompt_tokens, o.samples, 9))
    stream.put(_out(1))
    stream.put(_out(0))
    stream.close()
    outs = stream.collect()
    assert [o.prompt_index for o in outs] == [0, 1] and outs[0].weight_version == 9
    stream.cancel()  # after the end: no-op
    assert done == [1]


def test_stream_cancel_from_another_thread_unblocks_the_consumer():
    aborted = threading.Event()
    stream = GenerationStream(1, on_cancel=aborted.set)
    threading.Timer(0.1, stream.cancel).start()
    assert list(stream) == []
    assert aborted.is_set() and stream.cancelled


def test_stream_failure_is_raised_to_the_consumer():
    stream = GenerationStream(1)
    stream.fail(RuntimeError("engine died"))
    with pytest.raises(RuntimeError, match="engine died"):
        next(stream)


def test_stream_batches_group_what_is_ready_and_keep_the_end_for_later():
    done = []
    stream = GenerationStream(4)
    stream.add_done_callback(lambda: done.append(1))
    stream.set_transform(lambda o: PromptOutput(o.prompt_index, o.prompt_tokens, o.samples, 7))
    batches = stream.batches()
    for i in (2, 0, 3):
        stream.put(_out(i))
    first = next(batches)  # all three were queued: one group, completion order
    assert [o.prompt_index for o in first] == [2, 0, 3]
    assert all(o.weight_version == 7 for o in first)
    stream.put(_out(1))
    stream.close()
    assert [o.prompt_index for o in next(batches)] == [1]  # the end waits for its own turn
    assert done == []
    assert list(batches) == [] and done == [1]


def test_stream_batches_raise_a_failure_after_the_outputs_before_it():
    stream = GenerationStream(2)
    stream.put(_out(0))
    stream.fail(RuntimeError("engine died"))
    batches = stream.batches()
    assert [o.prompt_index for o in next(batches)] == [0]
    with pytest.raises(RuntimeError, match="engine died"):
        next(batches)
