"""RolloutEngine(sleep_when_idle=True): the generator sleeps between generations and wakes
for the next one or for a weight update (what colocated engines do on GPUs)."""

from __future__ import annotations

import time

from quartet.engines.generation import RolloutEngine
from quartet.types import SamplingConfig
from quartet.weightsync import TensorSpec


class SleepLog:
    """Wraps the real HF generator and records the engine's sleep/wake calls."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def sleep(self) -> None:
        self.calls.append("sleep")

    def wake_up(self) -> None:
        self.calls.append("wake")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sleeps_when_idle_and_wakes_for_generation_and_updates(hf_generator, tiny_model_path):
    from safetensors.torch import load_file

    gen = SleepLog(hf_generator)
    engine = RolloutEngine(gen, sleep_when_idle=True)
    greedy = SamplingConfig(temperature=0, max_new_tokens=2)
    engine.generate([[1, 2, 3]], greedy).collect()
    wait_for(lambda: engine.asleep)
    assert gen.calls == ["sleep"]
    engine.generate([[1, 2, 3]], greedy).collect()  # woken first, asleep again after
    wait_for(lambda: engine.asleep)
    assert gen.calls == ["sleep", "wake", "sleep"]
    weights = load_file(str(tiny_model_path / "model.safetensors"))
    engine.push_weights(1, [TensorSpec.of(k, v) for k, v in weights.items()],
                        weights.items())
    assert gen.calls[-1] == "wake" and not engine.asleep
    assert engine.weight_version == 1


def test_engines_that_do_not_ask_never_sleep(hf_generator):
    gen = SleepLog(hf_generator)
    engine = RolloutEngine(gen)
    engine.generate([[1, 2]], SamplingConfig(temperature=0, max_new_tokens=2)).collect()
    time.sleep(0.2)
    assert gen.calls == [] and not engine.asleep
