"""The rollout server's --enable-sleep on an engine that cannot release its memory is refused
when the service starts, naming the flag, the backend and the fix, not at the first
ReleaseMemory an iteration later."""

from __future__ import annotations

import argparse
import os

import pytest

from services.rollout.server import add_arguments, build_engine


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_enable_sleep_with_the_hf_backend_is_refused_before_loading():
    args = _args("--model", "/nonexistent/model", "--backend", "hf", "--enable-sleep")
    with pytest.raises(ValueError) as err:
        build_engine(args)  # a model load would fail on the path first
    message = str(err.value)
    for part in ("--enable-sleep", "--vllm.enable_sleep", "the hf generation backend",
                 "--backend vllm"):
        assert part in message, message


def test_a_generator_that_cannot_release_is_refused_by_the_engine(tiny_model_path):
    from quartet.engines.generation import RolloutEngine
    from quartet.engines.generation.hf_generator import HFGenerator

    generator = HFGenerator(str(tiny_model_path), dtype="float32")
    try:
        with pytest.raises(ValueError, match="--enable-sleep .* the hf generation backend"):
            RolloutEngine(generator, enable_release=True)
        RolloutEngine(generator)  # without release: fine
    finally:
        generator.close()


@pytest.mark.slow
def test_auto_falling_back_to_hf_is_refused_with_enable_sleep(head16_model):
    """`--backend auto` whose vLLM cannot run the model (head size 16 on CPU) falls back to
    HF generate, which cannot release: the server refuses to start."""
    pytest.importorskip("vllm")
    affinity = os.sched_getaffinity(0)
    args = _args("--model", str(head16_model), "--backend", "auto", "--dtype", "float32",
                 "--max-model-len", "128", "--kv-cache-bytes", str(64 << 20),
                 "--enforce-eager", "--enable-sleep")
    try:
        with pytest.raises(ValueError, match="--enable-sleep .* the hf generation backend"):
            build_engine(args)
    finally:
        os.sched_setaffinity(0, affinity)

