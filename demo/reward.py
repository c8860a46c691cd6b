"""The demo's verifier, as an OpenRLHF-style rule reward file (`--reward.func`).

Reward 1 when the response's last number equals the label, else 0. The reward service loads
this file by path; it imports only the standard library and returns plain lists, so the reward
service never imports torch (~220 MiB less resident; docs/rewards.md).
"""

from __future__ import annotations

import re

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
    has_number = [float(parse_answer(r) is not None) for r in responses]
    return {"rewards": correct, "scores": correct,
            "extra_logs": {"accuracy": correct, "has_number": has_number}}
