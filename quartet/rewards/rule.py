"""Rule-based rewards from a user's Python file exposing `reward_func`.

OpenRLHF users write `reward_func(queries, prompts, labels)` returning a tensor or a dict
with `rewards` (and optional `scores`, `extra_logs`); the same file works here. A function
that also declares a `responses` parameter gets the response texts.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

from quartet.rewards.base import RewardInputs, RewardResult, normalize_result


class RuleReward:
    def __init__(self, path: str | Path, func_name: str = "reward_func") -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reward function file {str(path)!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"quartet_reward_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"{path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fn = getattr(module, func_name, None)
        if not callable(fn):
            raise ValueError(f"{path}: defines no callable {func_name!r}")
        self.fn = fn
        self.name = f"{path.name}:{func_name}"
        self._wants_responses = "responses" in inspect.signature(fn).parameters

    def __call__(self, inputs: RewardInputs) -> RewardResult:
        kwargs = {"queries": inputs.queries, "prompts": inputs.prompts, "labels": inputs.labels}
        if self._wants_responses:
            kwargs["responses"] = inputs.responses
        return normalize_result(self.fn(**kwargs), len(inputs), self.name)


def load_reward_file(path: str | Path, func_name: str = "reward_func") -> RuleReward:
    return RuleReward(path, func_name)
