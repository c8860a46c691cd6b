"""What every reward source takes and returns (mirrors OpenRLHF's remote reward JSON)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the codec imports torch; a rule or HTTP reward service need not
    from quartet.codec.batches import RowBatch


@dataclass
class RewardInputs:
    queries: list[str]  # prompt + response text
    prompts: list[str]
    responses: list[str]
    labels: list[str]
    batch: RowBatch | None = None

    def __len__(self) -> int:
        return len(self.queries)


@dataclass
class RewardResult:
    rewards: list[float]
    scores: list[float] | None = None
    extra_logs: dict[str, list[float]] = field(default_factory=dict)
    step_scores: list[list[float]] | None = None
    """Per-sample lists of per-step scores (process reward models); None when not given."""


class RewardFunction(Protocol):
    name: str

    def __call__(self, inputs: RewardInputs) -> RewardResult: ...


def _floats(value: Any, what: str, n: int) -> list[float]:
    torch = sys.modules.get("torch")  # a tensor exists only if its function imported torch
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().float().reshape(-1).tolist()
    elif isinstance(value, int | float):
        value = [float(value)]
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: expected {n} numbers, got {type(value).__name__}") from exc
    if len(out) != n:
        raise ValueError(f"{what}: expected {n} values (one per sample), got {len(out)}")
    for i, v in enumerate(out):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"{what}[{i}]: is {v}; rewards must be finite")
    return out


def normalize_result(raw: Any, n: int, source: str) -> RewardResult:
    """Accepts a list/tensor of rewards or a dict {rewards, scores?, extra_logs?}."""
    if isinstance(raw, RewardResult):
        raw = {"rewards": raw.rewards, "scores": raw.scores, "extra_logs": raw.extra_logs}
    if isinstance(raw, Mapping):
        if "rewards" not in raw:
            raise ValueError(f"{source}: result has no 'rewards' key (keys: {sorted(raw)})")
        rewards = _floats(raw["rewards"], f"{source}.rewards", n)
        scores = (_floats(raw["scores"], f"{source}.scores", n)
                  if raw.get("scores") is not None else None)
        extra = {}
        for name, values in (raw.get("extra_logs") or {}).items():
            extra[str(name)] = _floats(values, f"{source}.extra_logs.{name}", n)
        return RewardResult(rewards, scores, extra)
    return RewardResult(_floats(raw, f"{source}.rewards", n))


def check_inputs(inputs: RewardInputs) -> None:
    n = len(inputs.queries)
    for name in ("prompts", "responses", "labels"):
        got = len(getattr(inputs, name))
        if got not in (0, n):
            raise ValueError(f"{name}: has {got} entries for {n} queries")
    if inputs.batch is not None and len(inputs.batch) not in (0, n):
        raise ValueError(f"batch: has {len(inputs.batch)} rows for {n} queries")


def pad_list(values: Sequence[str], n: int) -> list[str]:
    return list(values) if values else [""] * n
