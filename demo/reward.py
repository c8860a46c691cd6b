"""The demo's verifier, as an OpenRLHF-style rule reward file (`--reward.func`).

Reward 1 when the response's last number equals the label, else 0. The reward service loads
this file by path; it imports only the standard library and torch.
"""

from __future__ import annotations

import re

import torch

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def parse_answer(response: str) -> int | None:
    """The last number in the response (commas allowed); None if none or not whole."""
    found = _NUMBER.findall(response)
    if not found:
        return None
    try:
        value = float(found[-1].replace(",", ""))
    except ValueError:
        return None
    return int(value) if value == int(value) else None


def is_correct(response: str, label) -> bool:
    got = parse_answer(response)
    return got is not None and got == int(label)


def reward_func(queries, prompts, labels, responses=None):
    responses = responses if responses is not None else [
        q[len(p):] for q, p in zip(queries, prompts, strict=True)]
    correct = [float(is_correct(r, y)) for r, y in zip(responses, labels, strict=True)]
    rewards = torch.tensor(correct)
    has_number = torch.tensor([float(parse_answer(r) is not None) for r in responses])
    return {"rewards": rewards, "scores": rewards,
            "extra_logs": {"accuracy": rewards, "has_number": has_number}}
